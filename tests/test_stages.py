"""Stages are plug-ins: a stage defined here, registered with one line, runs through sample.py's own code path with
its own config block, checks and outputs."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

import sample
from magicme.schema import load_sample_config
from magicme.stages import STAGES, Stage
from tests.test_sampling import write_config


@dataclass
class FadeConfig:
    amount: float = 0.5  # how far each frame fades to black


class Fade(Stage):
    """A refinement stage as a contributor would write one: settings, a check, the work."""

    name = "fade"
    Config = FadeConfig

    @classmethod
    def check(cls, cfg):
        return [] if 0.0 <= cfg.fade.amount <= 1.0 else [f"fade.amount: {cfg.fade.amount} not in [0, 1]"]

    def __call__(self, pipe, video, sample, generator):
        return video * (1.0 - self.settings.amount), {"faded": self.settings.amount}


@pytest.fixture
def fade_registered(monkeypatch):
    monkeypatch.setitem(STAGES, "fade", Fade)  # the one registry line (undone after the test)


def frames(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255 for p in sorted(folder.glob("*.png"))])


def test_a_stage_defined_in_a_test_runs_through_sample_py(tmp_path, tiny_bundle, fade_registered):
    config = write_config(tmp_path, tiny_bundle, prompts=["<tinyperson> man"])
    assert sample.main(["--config", str(config), "--quiet", "save_frames=true", "stages=[t2v,fade]",
                        "fade.amount=0.25"]) == 0
    (run_dir,) = (tmp_path / "out").iterdir()
    t2v, fade = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert (t2v["stage"], fade["stage"], fade["faded"]) == ("t2v", "fade", 0.25)
    assert fade["files"]["mp4"].endswith("_fade.mp4")
    before, after = frames(run_dir / t2v["files"]["frames"]), frames(run_dir / fade["files"]["frames"])
    assert np.abs(after - 0.75 * before).max() <= 1 / 255 + 1e-6


def test_a_plugin_stage_block_is_typed_and_checked_before_loading(tmp_path, tiny_bundle, fade_registered, capsys):
    cfg = load_sample_config(None, ["stages=[t2v,fade]"])
    assert cfg.fade.amount == 0.5  # the block's defaults come from the stage's Config
    config = write_config(tmp_path, tiny_bundle)
    assert sample.main(["--config", str(config), "--quiet", "stages=[t2v,fade]", "fade.amount=2"]) == 2
    assert "fade.amount: 2.0 not in [0, 1]" in capsys.readouterr().err
    assert sample.main(["--config", str(config), "--quiet", "stages=[t2v,fade]", "fade.amount=lots"]) == 2
    assert "fade.amount" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_without_the_registry_line_the_stage_is_unknown(tmp_path, tiny_bundle, capsys):
    config = write_config(tmp_path, tiny_bundle)
    assert sample.main(["--config", str(config), "--quiet", "stages=[t2v,fade]"]) == 2
    assert "stages: 'fade' is not one of t2v, edit, face, tiled" in capsys.readouterr().err


@pytest.mark.parametrize("stages, message", [
    ("[face]", "must start with exactly one of t2v, edit"),
    ("[t2v,edit]", "must start with exactly one of t2v, edit"),
    ("[]", "stages: empty"),
])
def test_stage_order_is_checked(tmp_path, tiny_bundle, capsys, stages, message):
    config = write_config(tmp_path, tiny_bundle)
    assert sample.main(["--config", str(config), "--quiet", f"stages={stages}"]) == 2
    assert message in capsys.readouterr().err


def test_input_video_makes_the_first_stage_edit():
    assert list(load_sample_config(None, ["input_video=clip.mp4", "stages=[t2v,face]"]).stages) == ["edit", "face"]
    assert list(load_sample_config(None, ["stages=[t2v,face]"]).stages) == ["t2v", "face"]
