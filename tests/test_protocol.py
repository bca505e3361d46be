"""scripts/paper_protocol.py: the plan (exact commands, written configs, GPU-hour arithmetic) without running
anything, the report's per-stage means, bad input; end to end on the tiny bundle (slow)."""

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from magicme.errors import ConfigError
from magicme.evaluation.paper import Costs, load_costs, report_rows, video_seconds
from scripts import paper_protocol

COSTS = load_costs("configs/eval/gpu_costs.yaml")


def test_the_costs_file_holds_the_measured_h100_figures():
    assert (COSTS.t2v_seconds, COSTS.stage_factors["face"], COSTS.stage_factors["tiled"]) == (4.54, 0.88, 1.67)
    assert COSTS.reference == {"frames": 16, "width": 512, "height": 512, "steps": 25}
    assert COSTS.train_seconds_per_step * 400 == pytest.approx(65)


def test_video_seconds_scale_from_the_reference_shape():
    costs = Costs("x", 4.0, {"frames": 16, "width": 512, "height": 512, "steps": 25}, {"t2v": 1, "face": 0.5,
                                                                                        "tiled": 2}, 0.1)
    assert video_seconds(costs, 16, 512, 512, 25, ["t2v"]) == 4.0
    assert video_seconds(costs, 32, 512, 256, 50, ["t2v"]) == 8.0
    assert video_seconds(costs, 16, 512, 512, 20, ["t2v", "face", "tiled"]) == pytest.approx(3.2 * 3.5)
    with pytest.raises(ConfigError, match="stages: no measured cost for 'upscale'"):
        video_seconds(costs, 16, 512, 512, 25, ["t2v", "upscale"])


def test_dry_run_prints_the_plan_and_runs_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the dry run started a command"))
    out = tmp_path / "paper"
    assert paper_protocol.main(["--identities", "altman", "scarlett", "--class-word", "scarlett=woman",
                                "--out", str(out), "--dry-run"]) == 0
    assert not out.exists()
    lines = capsys.readouterr().out.splitlines()
    evaluate = f"python scripts/evaluate.py --samples {out}/samples"
    assert lines == [
        f"writes {out}/train.yaml: configs/train/team.yaml training altman, scarlett from dataset/<name>",
        f"writes {out}/sample-altman.yaml: configs/sample/paper.yaml with the 25 prompts and 4 seeds of "
        f"configs/eval/prompts_man.yaml for altman, embeddings from {out}/embeddings",
        f"writes {out}/sample-scarlett.yaml: configs/sample/paper.yaml with the 25 prompts and 4 seeds of "
        f"configs/eval/prompts_man.yaml for scarlett, embeddings from {out}/embeddings",
        f"1. train: python train.py --config {out}/train.yaml --resume auto",
        "   2 identities × 400 steps × 0.1625 s = 130 GPU-s",
        f"2. sample altman: python sample.py --config {out}/sample-altman.yaml --run-dir {out}/samples/altman",
        "   25 prompts × 4 seeds × 6.83 s (t2v+face) = 683 GPU-s",
        f"3. sample scarlett: python sample.py --config {out}/sample-scarlett.yaml --run-dir {out}/samples/scarlett",
        "   25 prompts × 4 seeds × 6.83 s (t2v+face) = 683 GPU-s",
        f"4. evaluate altman: {evaluate}/altman --references dataset/altman --out {out}/eval/altman",
        f"5. evaluate scarlett: {evaluate}/scarlett --references dataset/scarlett --out {out}/eval/scarlett",
        "estimated GPU time: 0.42 GPU-hours on NVIDIA H100 80GB, fp16 (configs/eval/gpu_costs.yaml; model loading "
        "and evaluation not included)",
    ]
    # paper.yaml: 16 × 512², 20 steps, stages t2v + face: 4.54 · 20/25 · (1 + 0.88) s a video, 100 videos each
    per_video = 4.54 * 20 / 25 * 1.88
    assert f"{(2 * 400 * 0.1625 + 2 * 100 * per_video) / 3600:.2f}" == "0.42"


def test_published_embeddings_stages_and_launcher(tmp_path, capsys):
    out = tmp_path / "p"
    assert paper_protocol.main(["--identities", "altman", "--embeddings", "models/embeddings", "--out", str(out),
                                "--stages", "t2v,face,tiled", "--launch", "accelerate launch --num_processes 8",
                                "--eval-config", "configs/eval/default.yaml", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [
        f"1. sample altman: accelerate launch --num_processes 8 sample.py --config {out}/sample-altman.yaml "
        f"--run-dir {out}/samples/altman",
        "   25 prompts × 4 seeds × 12.89 s (t2v+face+tiled) = 1289 GPU-s",
        f"2. evaluate altman: python scripts/evaluate.py --samples {out}/samples/altman --references dataset/altman "
        f"--out {out}/eval/altman --config configs/eval/default.yaml",
        "estimated GPU time: 0.36 GPU-hours on NVIDIA H100 80GB, fp16 (configs/eval/gpu_costs.yaml; model loading "
        "and evaluation not included)",
    ]
    assert lines[0].endswith("embeddings from models/embeddings")


def test_the_written_configs_train_and_sample_the_protocol(tmp_path):
    from magicme.evaluation.paper import build_plan, write_configs
    from magicme.schema import load_sample_config
    from magicme.training.config import load_train_configs

    plan = build_plan(["ann", "bob"], tmp_path / "p", Path("photos"), Path("configs/eval/prompts_woman.yaml"),
                      Path("configs/sample/paper.yaml"), COSTS, train_base=Path("configs/train/team.yaml"),
                      class_words={"ann": "woman"}, stages=["t2v", "face", "tiled"])
    write_configs(plan)
    ann, bob = load_train_configs([tmp_path / "p" / "train.yaml"])
    assert (ann.name, ann.images_dir, ann.class_word, bob.class_word) == ("ann", "photos/ann", "woman", "man")
    assert ann.output_dir == str(tmp_path / "p" / "train") and bob.copy_to_embeddings_dir == str(
        tmp_path / "p" / "embeddings")
    sample = load_sample_config(tmp_path / "p" / "sample-ann.yaml")
    assert list(sample.identities) == ["ann"] and dict(sample.class_words) == {}  # ann.pt will carry "woman"
    protocol = yaml.safe_load(Path("configs/eval/prompts_woman.yaml").read_text())
    assert list(sample.prompts) == protocol["prompts"] and list(sample.seeds) == [0, 1, 2, 3]
    assert list(sample.stages) == ["t2v", "face", "tiled"] and sample.steps == 20  # paper.yaml's settings stay
    assert sample.model.embeddings_dir == str(tmp_path / "p" / "embeddings")


def test_published_embeddings_get_their_class_words_in_the_sampling_config(tmp_path):
    from magicme.evaluation.paper import build_plan, write_configs

    plan = build_plan(["ann", "bob"], tmp_path / "p", Path("photos"), Path("configs/eval/prompts_woman.yaml"),
                      Path("configs/sample/paper.yaml"), COSTS, embeddings=Path("published"),
                      class_words={"ann": "woman"})
    write_configs(plan)
    assert [s.what for s in plan.steps] == ["sample ann", "sample bob", "evaluate ann", "evaluate bob"]
    ann = yaml.safe_load((tmp_path / "p" / "sample-ann.yaml").read_text())
    bob = yaml.safe_load((tmp_path / "p" / "sample-bob.yaml").read_text())
    assert (ann["identities"], ann["class_words"], ann["model"]["embeddings_dir"]) == (["ann"], {"ann": "woman"},
                                                                                     "published")
    assert bob["identities"] == ["bob"] and "class_words" not in bob
    assert not (tmp_path / "p" / "train.yaml").exists()


@pytest.mark.parametrize("args,message", [
    (["--identities", "Ann"], "--identities: ['Ann'] must be distinct lower-case names"),
    (["--identities", "ann", "ann"], "must be distinct"),
    (["--identities", "ann", "--class-word", "bob=man"], "--class-word: 'bob=man' must be NAME=WORD"),
    (["--identities", "ann", "--stages", "t2v,sharpen"], "stages: no measured cost for 'sharpen'"),
    (["--identities", "ann", "--prompts", "configs/sample/paper.yaml"], "model: Key 'model' not in 'Protocol' (in configs/sample/paper.yaml)"),
    (["--identities", "ann", "--costs", "configs/eval/default.yaml"], "default.yaml: not a costs file"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    assert paper_protocol.main([*args, "--out", str(tmp_path / "p"), "--dry-run"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_report_rows_and_means_over_identities():
    def group(stage, clip_i, face):
        return {"stage": stage, "videos": 4, "clip_i": clip_i, "clip_t": 0.3, "dino": 0.5, "temporal": 0.9,
                "face_detected": 1.0, "face_distance": face, "face_cosine": face, "face_match": face}

    rows = report_rows({"ann": {"groups": [group("t2v", 0.6, 0.4), group("face", 0.7, None)]},
                        "bob": {"groups": [group("t2v", 0.8, None), group("face", 0.9, None)]}})
    assert [(r["identity"], r["stage"], r["videos"]) for r in rows] == [
        ("ann", "t2v", 4), ("ann", "face", 4), ("bob", "t2v", 4), ("bob", "face", 4),
        ("mean of 2", "t2v", 8), ("mean of 2", "face", 8)]
    assert rows[4]["clip_i"] == pytest.approx(0.7) and rows[4]["face_distance"] == pytest.approx(0.4)  # bob's missing value is left out
    assert rows[5]["clip_i"] == pytest.approx(0.8) and math.isnan(rows[5]["face_distance"])


@pytest.mark.slow
def test_protocol_end_to_end_on_the_tiny_bundle_and_again(tmp_path, tiny_bundle, capsys):
    """Train 2 identities, sample 1 prompt × 2 seeds each with the grid sampler, evaluate, report; a second run
    finds everything done (training finished, samples present, scores cached)."""
    import numpy as np
    from PIL import Image

    from magicme.tiny.eval_models import save_tiny_clip, save_tiny_dino

    for seed, name in enumerate(("ann", "bob")):
        (tmp_path / "dataset" / name).mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
                tmp_path / "dataset" / name / f"{i}.png")
    train = yaml.safe_load(Path("configs/train/team.yaml").read_text())
    train.update(init="man", resolution=64, batch_size=2, max_steps=2, checkpoint_every=2, mask_threshold=0.0,
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
    args = ["--identities", "ann", "bob", "--class-word", "ann=woman", "--out", str(out), "--dataset",
            str(tmp_path / "dataset"), "--train-config", str(tmp_path / "train.yaml"), "--sample-config",
            str(tmp_path / "sample.yaml"), "--prompts", str(tmp_path / "prompts.yaml"), "--stages", "t2v",
            "--eval-config", str(tmp_path / "eval.yaml")]
    assert paper_protocol.main(args) == 0
    report = (out / "report.md").read_text().splitlines()
    rows = [line for line in report if line.startswith("| ann") or line.startswith("| bob")
            or line.startswith("| mean")]
    assert [r.split(" | ")[:3] for r in rows] == [["| ann", "t2v", "2"], ["| bob", "t2v", "2"],
                                                  ["| mean of 2", "t2v", "4"]]
    records = [json.loads(line) for line in (out / "samples" / "ann" / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["a photo of embedding:ann woman walking"] * 2
    videos = sorted(p.stat().st_mtime_ns for p in (out / "samples").rglob("*.mp4"))
    assert paper_protocol.main(args) == 0  # again: nothing redone
    assert sorted(p.stat().st_mtime_ns for p in (out / "samples").rglob("*.mp4")) == videos
    cache = json.loads((out / "eval" / "ann" / "metrics.json").read_text())["cache"]
    assert cache == {"computed": 0, "cached": 2}
