"""End-to-end wiring of train.py on the tiny bundle: the person mask reaches the loss, and validation videos are
rendered with the vectors of their step."""

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import train
from magicme.embeddings import load_embedding_file
from magicme.families.sd15 import load
from magicme.segmentation import model_identity
from magicme.training import trainer
from magicme.training.config import load_train_config
from magicme.training.data import mask_cache_key
from magicme.video_io import read_video, write_video
from tests.test_training import write_train_config


@pytest.fixture(scope="module")
def noise_photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("noise_photos")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def train_with_mask(tmp_path: Path, tiny_bundle, photos: Path, mask: np.ndarray, orig_rate: float) -> torch.Tensor:
    """Train 2 steps with `mask` as every photo's cached person mask; returns the final vectors.

    The mask goes in through the mask cache, the way a computed one would come back on a second run.
    """
    folder = tmp_path / f"{mask.mean():.2f}-{mask[0, 0]:.0f}-{orig_rate}"
    folder.mkdir()
    config = write_train_config(folder, tiny_bundle, photos, max_steps=2, use_orig_img_rate=orig_rate)
    cfg = load_train_config(config)
    for photo in photos.iterdir():
        key = mask_cache_key(photo, cfg.mask_prompt, model_identity(cfg.model.clipseg), cfg.mask_threshold)
        (folder / "cache").mkdir(exist_ok=True)
        Image.fromarray((mask * 255).astype(np.uint8)).save(folder / "cache" / f"{key}.png")
    assert train.main(["--config", str(config), "--quiet"]) == 0
    (pt,) = (folder / "runs").glob("*/tinyperson2.pt")
    return load_embedding_file(pt)


def test_the_person_mask_decides_what_the_loss_sees(tmp_path, tiny_bundle, noise_photos, monkeypatch):
    monkeypatch.setattr(trainer, "ClipSegSegmenter", lambda *a, **k: pytest.fail("masks should come from the cache"))
    left, right, full = np.zeros((80, 80)), np.zeros((80, 80)), np.ones((80, 80))
    left[:, :40] = 1
    right[:, 40:] = 1
    on_left = train_with_mask(tmp_path, tiny_bundle, noise_photos, left, 0.0)
    on_right = train_with_mask(tmp_path, tiny_bundle, noise_photos, right, 0.0)
    on_all = train_with_mask(tmp_path, tiny_bundle, noise_photos, full, 0.0)
    left_but_whole_photo = train_with_mask(tmp_path, tiny_bundle, noise_photos, left, 1.0)
    assert not torch.equal(on_left, on_right) and not torch.equal(on_left, on_all)
    # use_orig_img_rate = 1: every example counts the whole photo, exactly as a mask covering everything does
    assert torch.equal(left_but_whole_photo, on_all)


def test_validation_videos_use_the_vectors_of_their_step(tmp_path, tiny_bundle, noise_photos):
    config = write_train_config(tmp_path, tiny_bundle, noise_photos, max_steps=2, checkpoint_every=1, lr=0.5, **{
        "validation.every": 1, "validation.prompts": ["a photo of {id} (walking:1.4)"], "validation.seeds": [3],
        "validation.prompt_weighting": "none",
        "validation.frames": 2, "validation.width": 32, "validation.height": 32, "validation.steps": 1})
    assert train.main(["--config", str(config), "--quiet"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    (gif_1,), (gif_2,) = (list((run_dir / "samples" / f"step-{k}").glob("*.gif")) for k in (1, 2))
    at_1, at_2 = read_video(gif_1), read_video(gif_2)
    # the sampling pipeline, given the step-2 checkpoint as an embedding file, renders the step-2 video
    v = OmegaConf.load(run_dir / "config.yaml").validation
    pipe = load(v.model, {"tinyperson2": run_dir / "checkpoints" / "tinyperson2-step-2.pt"}, device="cpu")
    pipe.prompts.weighting = "none"  # validation reads its prompts as configured: here literally
    video = pipe.text_to_video("a photo of embedding:tinyperson2 man (walking:1.4)", v.negative_prompt,
                               torch.Generator().manual_seed(3), gamma=v.gamma, frames=v.frames, height=v.height,
                               width=v.width, steps=v.steps, guidance_scale=v.guidance_scale, progress=False)
    write_video(tmp_path / "reference", video, v.fps, formats=("gif",))
    assert np.array_equal(read_video(tmp_path / "reference.gif"), at_2)
    assert not np.array_equal(at_1, at_2)  # and the vectors moved between the steps enough for videos to show it
    assert gif_2.name == "0000-a-photo-of-tinyperson2-man-walking-1-4-3.gif"  # {id} became "<tinyperson2> man"
