"""End-to-end sample.py on the tiny bundle, reproducibility, and the config checks that run before any model loads."""

import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml

import sample
from magicme.embeddings import save_embedding
from magicme.steps import schedule_length
from magicme.video_io import read_video


def write_config(tmp_path, tiny_bundle, **changes):
    cfg = {
        "model": {
            "base": str(tiny_bundle["sd15"]),
            "motion_module": str(tiny_bundle["motion_v2"]),
            "motion_loras": [{"path": str(tiny_bundle["motion_lora"]), "strength": 0.6}],
            "embeddings_dir": str(tiny_bundle["embedding"].parent),
        },
        "prompts": ["a photo of embedding:tinyperson man", {"prompt": "<tinyperson> man running", "seeds": [5]}],
        "seeds": [1], "steps": 2, "frames": 4, "width": 64, "height": 48, "fps": 4,
        "output_dir": str(tmp_path / "out"),
    }
    for key, value in changes.items():
        node, *path = key.split(".")
        target = cfg
        for part in [node, *path][:-1]:
            target = target.setdefault(part, {})
        target[[node, *path][-1]] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_dirs(tmp_path):
    out = tmp_path / "out"
    return sorted(out.iterdir()) if out.exists() else []


def test_sample_py_end_to_end(tmp_path, tiny_bundle, capsys):
    config = write_config(tmp_path, tiny_bundle)
    assert sample.main(["--config", str(config), "--quiet", "save_frames=true", "seeds=[1,-1]"]) == 0
    (run_dir,) = run_dirs(tmp_path)
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 3  # prompt 1 × seeds [1, random] + prompt 2 × its own seed
    for record in records:
        mp4 = iio.imread(run_dir / record["files"]["mp4"], plugin="pyav")
        gif = read_video(run_dir / record["files"]["gif"])
        assert mp4.shape == (4, 48, 64, 3) and gif.shape == (4, 48, 64, 3)
        assert len(list((run_dir / record["files"]["frames"]).glob("frame-*.png"))) == 4
        assert record["stage"] == "t2v" and record["seconds"] > 0
    assert records[1]["seed"] != -1 and records[2]["seed"] == 5
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert [p["seeds"] for p in saved["prompts"]] == [[1], [records[1]["seed"]], [5]]
    assert saved["seeds"] == [1, records[1]["seed"]]  # the shared seeds as used, not the union with prompt 2's [5]
    assert (run_dir / "grid.gif").is_file()
    assert str(run_dir) in capsys.readouterr().out


def test_saved_config_reproduces_the_run(tmp_path, tiny_bundle):
    config = write_config(tmp_path, tiny_bundle)
    assert sample.main(["--config", str(config), "--quiet", "save_frames=true", "seeds=[-1]"]) == 0
    (first,) = run_dirs(tmp_path)
    assert sample.main(["--config", str(first / "config.yaml"), "--quiet"]) == 0
    second = next(d for d in run_dirs(tmp_path) if d != first)
    for folder in sorted(p for p in first.iterdir() if p.is_dir() and p.name != "manifest"):
        assert np.array_equal(read_video(folder), read_video(second / folder.name))


def test_same_seed_same_video_different_seed_different(tiny_pipeline):
    kwargs = dict(gamma=0.1, frames=3, height=32, width=32, steps=2, guidance_scale=7.5, progress=False)
    a = tiny_pipeline.text_to_video("<tinyperson> man", "", torch.Generator().manual_seed(1), **kwargs)
    b = tiny_pipeline.text_to_video("<tinyperson> man", "", torch.Generator().manual_seed(1), **kwargs)
    c = tiny_pipeline.text_to_video("<tinyperson> man", "", torch.Generator().manual_seed(2), **kwargs)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_video_to_video_runs_the_last_steps_of_a_schedule_of_steps_over_strength(tiny_pipeline, monkeypatch):
    """ComfyUI's `denoise`: strength s with n steps runs the last n timesteps of an int(n / s)-step schedule."""
    video = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    kwargs = dict(gamma=0.1, guidance_scale=1.0, progress=False)
    assert np.array_equal(tiny_pipeline.video_to_video(video, "x", "", torch.Generator(), strength=0.0, steps=10,
                                                       **kwargs), video)
    seen = []
    unet_forward = tiny_pipeline.v2v.unet.forward
    monkeypatch.setattr(tiny_pipeline.v2v.unet, "forward",
                        lambda *a, **k: seen.append(int(a[1])) or unet_forward(*a, **k))
    for strength, steps, length in ((0.2, 20, 100), (0.8, 20, 25), (0.3, 3, 10), (0.9, 7, 7), (1.0, 5, 5)):
        assert schedule_length(steps, strength) == length
        seen.clear()
        out = tiny_pipeline.video_to_video(video, "x", "", torch.Generator().manual_seed(0), strength=strength,
                                           steps=steps, **kwargs)
        reference = type(tiny_pipeline.v2v.scheduler).from_config(tiny_pipeline.v2v.scheduler.config)
        reference.set_timesteps(length)
        assert seen == reference.timesteps[-steps:].tolist()
        assert out.shape == video.shape


BAD_CONFIGS = [
    ({"stepz": 3}, "stepz"),
    ({"steps": "many"}, "steps"),
    ({"steps": 0}, "steps: 0 must be at least 1"),
    ({"width": 60}, "width: 60 must be a positive multiple of 8"),
    ({"gamma": 1.0}, "gamma: 1.0 not in [0, 1)"),
    ({"frames": 40}, "frames: 40 is more than the motion module's 32 frames"),
    ({"stages": ["t2v", "sharpen"]}, "stages: 'sharpen' is not one of"),
    ({"model.scheduler": "heun"}, "model.scheduler.name: 'heun' is neither a preset"),
    ({"model.scheduler": {"name": "euler", "kwargs": {"spacing": "trailing"}}},
     "model.scheduler.kwargs: EulerDiscreteScheduler has no setting spacing"),
    ({"model.family": "sd3"}, "model.family: 'sd3' is not one of sd15, sdxl"),
    ({"model.motion_module": "nowhere/mm.ckpt"}, "model.motion_module: nowhere/mm.ckpt: not found; run: bash download_checkpoint.sh"),
    ({"model.base": "models/missing-base"}, "model.base: models/missing-base: not found; run: bash download_checkpoint.sh"),
    ({"prompts": []}, "prompts: no prompts given"),
    ({"prompts": ["a photo of embedding:nobody man"]}, "unknown identity 'nobody'"),
    ({"prompts": [{"prompt": "x", "seed": 3}]}, "prompts[0]: unknown key(s) ['seed']"),
    ({"seeds": [-5]}, "seeds: [-5] must be one or more integers in [0, 2^32) or -1"),
    ({"prompts": [{"prompt": "x", "seeds": [-5]}]}, "prompts[0].seeds: [-5] must be one or more integers"),
    ({"prompts": [{"prompt": "x", "gamma": 1.5}]}, "prompts[0].gamma: 1.5 not a number in [0, 1)"),
    ({"prompts": ["a photo of embedding:ann.jpg man"]}, "prompts[0].prompt: 'embedding:ann.jpg' is not an identity"),
    ({"device": "cuda"}, "device: cuda asked for, but this machine has no usable CUDA GPU"),
    ({"device": "tpu"}, "device: 'tpu' is not auto, cpu, cuda, cuda:N or mps"),
    ({"model.motion_loras": [{"path": "nope.ckpt", "strength": 0.5}]}, "model.motion_loras[0].path: nope.ckpt: not found; check the path"),
    ({"precision": "fp8"}, "precision: 'fp8' is not one of"),
    ({"model.motion_module": "MM_V3"}, "model.motion_loras[0].path: "),  # v3 module: the v2 LoRA does not fit
    ({"cpu_offload": True, "device": "cpu"}, "cpu_offload: only meaningful with a GPU"),
]


@pytest.mark.parametrize("changes,message", BAD_CONFIGS, ids=[m.split(":")[0] for _, m in BAD_CONFIGS])
def test_bad_config_one_clear_error_nothing_written(tmp_path, tiny_bundle, capsys, changes, message):
    changes = {k: str(tiny_bundle["motion_v3"]) if v == "MM_V3" else v for k, v in changes.items()}
    config = write_config(tmp_path, tiny_bundle, **changes)
    assert sample.main(["--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_embedding_width_mismatch_caught_before_loading(tmp_path, tiny_bundle, capsys):
    emb_dir = tmp_path / "emb"
    save_embedding(emb_dir / "sdxlperson.pt", torch.zeros(4, 1280), "sdxlperson")
    config = write_config(tmp_path, tiny_bundle, **{"model.embeddings_dir": str(emb_dir),
                                                    "prompts": ["embedding:sdxlperson man"]})
    assert sample.main(["--config", str(config), "--quiet"]) == 2
    assert "width 1280" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_missing_config_file_and_bad_override(tmp_path, tiny_bundle, capsys):
    assert sample.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "--config: " in capsys.readouterr().err
    config = write_config(tmp_path, tiny_bundle)
    assert sample.main(["--config", str(config), "guidance_scale=loud"]) == 2
    assert "guidance_scale" in capsys.readouterr().err


def test_output_dir_that_is_a_file_or_read_only_fails_before_loading(tmp_path, tiny_bundle, capsys, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    config = write_config(tmp_path, tiny_bundle)
    assert sample.main(["--config", str(config), "--quiet", f"output_dir={blocker / 'runs'}"]) == 2
    assert f"output_dir: {blocker} is a file, not a folder" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # tests may run as root, which ignores permission bits: the folder is made read-only by the check's own probe
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    assert sample.main(["--config", str(config), "--quiet", f"output_dir={locked / 'runs'}"]) == 2
    assert f"output_dir: {locked} is not writable" in capsys.readouterr().err


def test_nan_and_empty_identities_fail_before_loading(tmp_path, tiny_bundle, capsys):
    emb = tmp_path / "emb"
    save_embedding(emb / "broken.pt", torch.full((2, 32), float("nan")), "broken")
    save_embedding(emb / "empty.pt", torch.zeros(0, 32), "empty")
    for name, message in (("broken", "NaN or infinite values"), ("empty", "0 tokens")):
        config = write_config(tmp_path, tiny_bundle, **{"model.embeddings_dir": str(emb),
                                                        "prompts": [f"embedding:{name} man"]})
        assert sample.main(["--config", str(config), "--quiet"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_stage_helper_models_load_once_per_run(tmp_path, tiny_bundle, monkeypatch):
    """Face VCD's CLIPSeg and Tiled VCD's upscaler are built once, however many videos a run refines."""
    import magicme.segmentation
    import magicme.upscale

    built = {"ClipSegSegmenter": 0, "Upscaler": 0}

    def counting(cls):
        class Counted(cls):
            def __init__(self, *args, **kwargs):
                built[cls.__name__] += 1
                super().__init__(*args, **kwargs)
        return Counted

    monkeypatch.setattr(magicme.segmentation, "ClipSegSegmenter", counting(magicme.segmentation.ClipSegSegmenter))
    monkeypatch.setattr(magicme.upscale, "Upscaler", counting(magicme.upscale.Upscaler))
    config = write_config(tmp_path, tiny_bundle, frames=2, seeds=[1, 2], prompts=["<tinyperson> man"])
    assert sample.main(["--config", str(config), "--quiet", "stages=[t2v,face,tiled]", "face.size=32",
                        f"face.clipseg_model={tiny_bundle['clipseg']}", "tiled.tile=64", "tiled.padding=8"]) == 0
    (run_dir,) = run_dirs(tmp_path)
    assert len((run_dir / "samples.jsonl").read_text().splitlines()) == 2 * 3  # 2 samples × 3 stages
    assert built == {"ClipSegSegmenter": 1, "Upscaler": 1}
