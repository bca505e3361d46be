"""scripts/golden.py: the golden manifest that guards refactors sees a changed frame and ignores timings."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("golden", ROOT / "scripts" / "golden.py")
golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(golden)


def test_timings_do_not_change_the_manifest_but_anything_else_does(tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    a.write_text(json.dumps({"name": "x", "seed": 1, "seconds": 1.5}) + "\n")
    b.write_text(json.dumps({"seconds": 9.0, "seed": 1, "name": "x"}) + "\n")
    c.write_text(json.dumps({"name": "x", "seed": 2, "seconds": 1.5}) + "\n")
    assert golden.stable_jsonl(a) == golden.stable_jsonl(b) != golden.stable_jsonl(c)


def test_differences_name_every_changed_missing_or_new_file():
    old = {"s.yaml": {"f0.png": "1", "f1.png": "2"}, "gone.yaml": {}}
    new = {"s.yaml": {"f0.png": "1", "f1.png": "3", "f2.png": "4"}, "new.yaml": {}}
    assert golden.differences(old, new) == ["gone.yaml: config gone", "new.yaml: new config",
                                            "s.yaml: f1.png differs", "s.yaml: f2.png differs"]
    assert golden.differences(old, old) == []


def test_only_sampling_configs_are_rendered():
    names = [p.name for p in golden.sampling_configs(ROOT / "configs" / "tiny")]
    assert "sample.yaml" in names and not any(n.startswith("train") for n in names)
