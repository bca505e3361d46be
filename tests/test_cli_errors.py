"""Every command-line tool answers a malformed config with one `error:` line and exit status 2 — no traceback."""

import importlib.util
from pathlib import Path

import pytest

import sample
import train

REPO = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLIS = {
    "sample.py": lambda config, extra: sample.main(["--config", str(config), "--quiet", *extra]),
    "train.py": lambda config, extra: train.main(["--config", str(config), "--quiet", *extra]),
    "check_models.py": lambda config, extra: script("check_models").main(["--config", str(config), *extra]),
    "evaluate.py": lambda config, extra: script("evaluate").main(
        ["--config", str(config), "--samples", "nowhere", "--references", "nowhere", "--quiet", *extra]),
}
A_KEY = {"sample.py": "steps", "train.py": "lr", "check_models.py": "steps", "evaluate.py": "batch_size"}
CASES = [
    ("not YAML", "steps: [4\nframes: 8", [], "not valid YAML"),
    ("a list", "- steps: 4\n- frames: 8", [], "the top level is a list"),
    ("broken interpolation", "KEY: ${nope}", [], "KEY: Interpolation key 'nope' not found"),
    ("unclosed override", "{}", ["seeds=[1,2"], "seeds: cannot parse the override"),
]
PARAMS = [(cli, *case) for cli in CLIS for case in CASES
          if not (cli == "evaluate.py" and case[0] == "unclosed override")]  # evaluate.py takes flags, not key=value


@pytest.mark.parametrize("cli, case, text, extra, message", PARAMS, ids=[f"{p[0]}-{p[1]}" for p in PARAMS])
def test_malformed_configs_are_one_line_errors(tmp_path, capsys, cli, case, text, extra, message):
    config = tmp_path / "config.yaml"
    config.write_text(text.replace("KEY", A_KEY[cli]))
    assert CLIS[cli](config, extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message.replace("KEY", A_KEY[cli]) in err and "Traceback" not in err
