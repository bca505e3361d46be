"""The web app (`python app.py`): forms.py maps the page's forms to configs, jobs.py runs them with the CLIs' own
code, ui.py builds the page."""
