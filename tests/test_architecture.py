"""The config path is import-light: a typo is reported before torch, transformers or diffusers are imported."""

import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers")


def heavy_modules_after(code: str) -> list[str]:
    probe = code + f"\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


def test_schema_stages_families_and_inspector_import_no_heavy_library():
    assert heavy_modules_after("import magicme.schema, magicme.inspector, magicme.families, magicme.prompts") == []


def test_sample_py_reports_a_typo_before_importing_torch():
    code = ("import contextlib, io, sample\nerr = io.StringIO()\nwith contextlib.redirect_stderr(err):\n"
            "    assert sample.main(['--config', 'configs/tiny/sample.yaml', 'steps=four']) == 2\n"
            "assert 'steps' in err.getvalue()")
    assert heavy_modules_after(code) == []
