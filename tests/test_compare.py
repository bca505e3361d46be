"""scripts/compare.py: methods refused by name, each method's training change, the 95 % intervals by hand, the
tables; end to end for tokens and tokens-unmasked on the tiny bundle (slow)."""

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from magicme.errors import ConfigError
from magicme.evaluation.compare import build_comparison, comparison_rows, interval, parse_methods, write_tables
from magicme.evaluation.paper import load_costs
from scripts import compare

COSTS = load_costs("configs/eval/gpu_costs.yaml")


@pytest.mark.parametrize("method", ["lora", "tokens+lora", "ip-adapter"])
def test_methods_the_project_lacks_are_refused_by_name(method, capsys, tmp_path):
    assert compare.main(["--identities", "ann", "--methods", f"tokens,{method}", "--out", str(tmp_path / "c"),
                         "--dry-run"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"error: --methods: {method} needs ") and "\n" not in message
    assert not (tmp_path / "c").exists()


def test_unknown_and_repeated_methods():
    with pytest.raises(ConfigError, match="unknown method 'dreambooth'"):
        parse_methods("tokens,dreambooth")
    with pytest.raises(ConfigError, match="distinct"):
        parse_methods("tokens,tokens")
    assert parse_methods(" tokens , tokens-unmasked ") == ["tokens", "tokens-unmasked"]


def test_each_method_changes_only_its_training(tmp_path):
    plans = build_comparison(["tokens", "tokens-unmasked"], tmp_path, identities=["ann"], dataset=Path("dataset"),
                             protocol=Path("configs/eval/prompts_man.yaml"),
                             sample_base=Path("configs/sample/paper.yaml"), costs=COSTS,
                             train_base=Path("configs/train/team.yaml"))
    masked = plans["tokens"].files[tmp_path / "tokens" / "train.yaml"][0]
    unmasked = plans["tokens-unmasked"].files[tmp_path / "tokens-unmasked" / "train.yaml"][0]
    assert unmasked.use_orig_img_rate == 1.0 and masked.get("use_orig_img_rate", 0.05) < 1.0
    assert masked.output_dir == str(tmp_path / "tokens" / "train")
    # the same prompt × seed grid for every method
    grids = [[(c.prompts, c.seeds) for p, (c, _) in plan.files.items() if p.name.startswith("sample-")]
             for plan in plans.values()]
    assert grids[0] == grids[1] and len(grids[0][0][0]) == 25
    assert not list(tmp_path.iterdir())  # nothing written by planning


def test_paper_preset_checks_25_prompts_by_4_seeds(tmp_path, capsys):
    assert compare.main(["--identities", "ann", "--out", str(tmp_path / "c"), "--dry-run", "--preset", "paper"]) == 0
    assert "estimated GPU time, all methods" in capsys.readouterr().out
    (tmp_path / "p.yaml").write_text("class_word: man\nseeds: [1]\nprompts: ['a photo of {id}']\n")
    assert compare.main(["--identities", "ann", "--out", str(tmp_path / "c"), "--dry-run", "--prompts",
                         str(tmp_path / "p.yaml")]) == 0  # without the preset, any protocol


def test_interval_by_hand():
    mean, half, n = interval([1.0, 2.0, 3.0, float("nan"), None])
    # t(0.975, 2) = 4.302653, s = 1, n = 3
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert interval([5.0])[:2] == (5.0, pytest.approx(float("nan"), nan_ok=True))
    assert math.isnan(interval([None])[0])


def test_rows_and_tables(tmp_path):
    videos = {"tokens": [{"stage": "t2v", "clip_i": 0.5}, {"stage": "t2v", "clip_i": 0.7}],
              "tokens-unmasked": [{"stage": "t2v", "clip_i": 0.4}]}
    rows = comparison_rows(videos)
    assert [(r["method"], r["videos"]) for r in rows] == [("tokens", 2), ("tokens-unmasked", 1)]
    assert rows[0]["clip_i"] == pytest.approx(0.6) and math.isnan(rows[1]["clip_i_ci95"])
    paths = write_tables(tmp_path, rows, {"estimated": 1.5, "measured": 0.25, "device": "cpu"})
    table = list(csv.DictReader(paths[0].open()))
    assert float(table[0]["clip_i"]) == pytest.approx(0.6)
    markdown = paths[1].read_text()
    assert "0.6000 ± 1.2706" in markdown and "estimated 1.500 before, measured 0.250 after" in markdown
    assert "<td>tokens-unmasked</td>" in paths[2].read_text()


@pytest.mark.slow
def test_compare_tokens_and_unmasked_end_to_end_on_the_tiny_bundle(tmp_path, tiny_bundle, capsys):
    """Both methods trained (2 steps), the same 1 prompt × 2 seeds sampled, evaluated, tabled; run again: done."""
    import numpy as np
    from PIL import Image

    from magicme.tiny.eval_models import save_tiny_clip, save_tiny_dino

    (tmp_path / "dataset" / "ann").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "dataset" / "ann" / f"{i}.png")
    train = yaml.safe_load(Path("configs/train/team.yaml").read_text())
    train.update(init="man", resolution=64, batch_size=2, max_steps=2, checkpoint_every=2, mask_threshold=0.5,
                 model={"base": str(tiny_bundle["sd15"]), "clipseg": str(tiny_bundle["clipseg"])},
                 mask_cache_dir=str(tmp_path / "masks"))
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    sample = yaml.safe_load(Path("configs/tiny/sample.yaml").read_text())
    sample["model"].update(base=str(tiny_bundle["sd15"]), motion_module=str(tiny_bundle["motion_v2"]),
                           motion_loras=[])
    sample.update(steps=2, frames=4)
    (tmp_path / "sample.yaml").write_text(yaml.safe_dump(sample))
    (tmp_path / "prompts.yaml").write_text("class_word: man\nseeds: [1, 2]\nprompts: ['a photo of {id} walking']\n")
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump({
        "clip": str(save_tiny_clip(tmp_path / "clip")), "dino": str(save_tiny_dino(tmp_path / "dino")),
        "device": "cpu", "faces": False}))
    out = tmp_path / "out"
    args = ["--identities", "ann", "--methods", "tokens,tokens-unmasked", "--out", str(out), "--dataset",
            str(tmp_path / "dataset"), "--train-config", str(tmp_path / "train.yaml"), "--sample-config",
            str(tmp_path / "sample.yaml"), "--prompts", str(tmp_path / "prompts.yaml"), "--stages", "t2v",
            "--eval-config", str(tmp_path / "eval.yaml")]
    assert compare.main(args) == 0
    written = yaml.safe_load((out / "tokens-unmasked" / "train.yaml").read_text())
    assert written["use_orig_img_rate"] == 1.0
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [(r["method"], r["stage"], r["videos"]) for r in rows] == [("tokens", "t2v", "2"),
                                                                      ("tokens-unmasked", "t2v", "2")]
    assert all(0 < float(r["clip_i"]) <= 1 and float(r["clip_i_ci95"]) >= 0 for r in rows)
    # the two methods trained different embeddings (the tiny CLIPSeg masks about half of each photo at 0.5)
    embeddings = [(out / m / "embeddings" / "ann.pt").read_bytes() for m in ("tokens", "tokens-unmasked")]
    assert embeddings[0] != embeddings[1]
    ledger = json.loads((out / "gpu_hours.json").read_text())["seconds"]
    assert set(ledger) == {"tokens: train", "tokens: sample ann", "tokens-unmasked: train",
                           "tokens-unmasked: sample ann"}
    videos = sorted(p.stat().st_mtime_ns for p in out.rglob("*.mp4"))
    assert compare.main(args) == 0  # again: nothing redone
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.mp4")) == videos
