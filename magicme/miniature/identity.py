"""An identity of the miniature world: photos of a (shape, colour) pair pretraining never saw, its exact masks, and
its ID tokens learned by the project's own training (`magicme.training`, what train.py runs).

train.py masks the loss with CLIPSeg's segmentation, read from its mask cache when present. No CLIPSeg can be
trained here, so the world's exact object masks are written into that cache under the key train.py computes
(`mask_cache_key` with the CLIPSeg folder's fingerprint): train.py then reads them and never runs the stand-in
CLIPSeg folder. The masked-loss ablation turns the mask off with the trainer's own knob, `use_orig_img_rate: 1.0`
(every example's loss counts the whole photo).
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from magicme.embeddings import save_embedding
from magicme.miniature.world import Scene, World, render
from magicme.segmentation import model_identity
from magicme.training.data import mask_cache_key
from magicme.video_io import atomic_path, to_uint8


def identity_renders(world: World, shape: str, colour: str, backgrounds: list[str], count: int,
                     seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` (image, mask) renders of the identity at random places and sizes, on `backgrounds` in turn."""
    rng = np.random.default_rng(seed)
    renders = []
    for i in range(count):
        half = float(rng.uniform(*world.half_range))
        centre = tuple(float(v) for v in rng.uniform(half + 1, world.size - half - 1, size=2))
        renders.append(render(world, Scene(shape, colour, backgrounds[i % len(backgrounds)], centre, half), rng))
    return renders


def write_photos(world: World, folder: Path, shape: str, colour: str, background: str, count: int,
                 seed: int) -> list[tuple[Path, np.ndarray]]:
    """`count` PNG renders of the identity on one background (`identity_renders`); (path, mask) each."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    for i, (image, mask) in enumerate(identity_renders(world, shape, colour, [background], count, seed)):
        path = folder / f"{i:02d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(to_uint8(image)).save(tmp, format="PNG")
        photos.append((path, mask))
    return photos


def seed_mask_cache(photos: list[tuple[Path, np.ndarray]], cache_dir: Path, clipseg: Path, prompt: str,
                    threshold: float) -> None:
    """Write each photo's exact mask where train.py looks for its CLIPSeg mask (same key, same PNG format)."""
    identity = model_identity(clipseg)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for path, mask in photos:
        with atomic_path(cache_dir / f"{mask_cache_key(path, prompt, identity, threshold)}.png") as tmp:
            Image.fromarray(to_uint8(mask)).save(tmp, format="PNG")


def train_tokens(config: Path | str, overrides: list[str]) -> Path:
    """Train one identity exactly as `train.py --config CONFIG OVERRIDES…` does; returns its `<name>.pt`."""
    from magicme.training.config import load_train_configs, validate_train_config
    from magicme.training.identities import Job, train_identities

    jobs = [Job(cfg, validate_train_config(cfg)) for cfg in load_train_configs([config], overrides)]
    (outcome,) = train_identities(jobs, progress=False)
    return Path(outcome.output)


def random_tokens(path: Path, name: str, reference: torch.Tensor, count: int, seed: int) -> Path:
    """`count` random vectors with the vocabulary's per-coordinate mean and spread: the "random tokens" control."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = reference.mean(0), reference.std(0)
    save_embedding(path, mean + std * torch.randn(count, reference.shape[1], generator=generator), name)
    return path
