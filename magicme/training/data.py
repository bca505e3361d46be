"""Training photos and their person masks, and the augmented batches the loop trains on.

Masks come from CLIPSeg with the config's `mask_prompt`, once per image: they are cached on disk under a key made
of the image's bytes, the prompt, the model and the threshold, so a second run (or a resumed one) reuses them.
"""

import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from magicme.errors import ConfigError
from magicme.training.augment import apply_geometry, caption_for, draw_geometry, square_crop
from magicme.video_io import atomic_path, to_uint8

log = logging.getLogger("magicme.train")


@dataclass
class TrainImage:
    path: Path
    pixels: np.ndarray  # (H, W, 3) float32 in [0, 1], centre-cropped square
    mask: np.ndarray  # (H, W) float32 in {0, 1}


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise ConfigError(f"{path}: cannot read this image ({err}); remove or replace it") from err


def mask_cache_key(path: Path, prompt: str, model_identity: str, threshold: float) -> str:
    digest = hashlib.sha256(path.read_bytes())
    digest.update(f"|{prompt}|{model_identity}|{threshold}".encode())
    return digest.hexdigest()[:32]


def load_training_images(paths: list[Path], segmenter_factory, prompt: str, threshold: float, cache_dir: Path,
                         overlay_dir: Path | None = None) -> list[TrainImage]:
    """Read every photo, get its person mask (cached), skip images whose mask is empty, with a warning each.

    `segmenter_factory()` returns a `ClipSegSegmenter`; it is only called if some mask is not cached yet.
    """
    pixels = {p: square_crop(read_image(p)) for p in paths}
    segmenter = None
    result = []
    for path in paths:
        image = pixels[path]
        segmenter = segmenter or segmenter_factory()
        cache = cache_dir / f"{mask_cache_key(path, prompt, segmenter.identity, threshold)}.png"
        if cache.is_file():
            mask = np.asarray(Image.open(cache), dtype=np.float32) / 255.0
        else:
            mask = (segmenter.probabilities(image[None], prompt)[0] >= threshold).astype(np.float32)
            with atomic_path(cache) as tmp:
                Image.fromarray(to_uint8(mask)).save(tmp, format="PNG")
        if mask.sum() == 0:
            log.warning("%s: the mask for %r is empty; skipping this image", path, prompt)
            continue
        if overlay_dir is not None:
            save_overlay(overlay_dir / f"{path.stem}.png", image, mask)
        result.append(TrainImage(path, image, mask))
    if not result:
        raise ConfigError(f"mask_prompt: CLIPSeg found no {prompt!r} in any training image; check the photos or "
                          "lower mask_threshold")
    return result


def save_overlay(path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    """The photo with everything outside the mask dimmed: what the loss will see."""
    shown = image * (0.25 + 0.75 * mask[..., None])
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(shown)).save(tmp, format="PNG")


@dataclass
class Example:
    pixels: np.ndarray  # (size, size, 3) in [0, 1]
    mask: np.ndarray  # (size, size) in {0, 1}; all ones for a full-image loss
    caption: str


def make_example(item: TrainImage, rng: random.Random, cfg, tokens: str) -> Example:
    """One augmented (image, mask, caption), exactly as the original's dataset draws it."""
    use_full_image = rng.random() < cfg.use_orig_img_rate
    a = cfg.augment
    geometry = draw_geometry(rng, cfg.resolution, a.flip_p, a.rotate_p, a.rotate_sigma, a.original_rotate_bug, a.zoom)
    pixels = apply_geometry(item.pixels, geometry, cfg.resolution, rotate_fill=0.0, canvas_fill=0.5)
    mask = np.ones_like(item.mask) if use_full_image else item.mask
    mask = (apply_geometry(mask[..., None], geometry, cfg.resolution)[..., 0] >= 0.5).astype(np.float32)
    return Example(np.clip(pixels, 0.0, 1.0), mask, caption_for(cfg.caption_template, tokens, geometry.prefix))


class BatchSampler:
    """Shuffled epochs over the images, drawn from one seeded generator whose state is checkpointed."""

    def __init__(self, count: int, seed: int):
        self.count = count
        self.generator = torch.Generator().manual_seed(seed)
        self.queue: list[int] = []

    def next(self, batch_size: int) -> list[int]:
        while len(self.queue) < batch_size:
            self.queue += torch.randperm(self.count, generator=self.generator).tolist()
        batch, self.queue = self.queue[:batch_size], self.queue[batch_size:]
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "queue": list(self.queue)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.queue = list(state["queue"])
