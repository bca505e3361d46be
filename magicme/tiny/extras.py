"""What `configs/tiny/` needs beyond the model bundle of `build_tiny_bundle`: the SparseCtrl nets and keyframes, the
evaluation models (CLIP and DINO in the real Hugging Face layouts) and a few synthetic photos per tiny identity
(training photos and evaluation references). `scripts/make_tiny_models.py` writes all of it; the tests build the same
tree, so every tiny config runs in a test exactly as a user runs it."""

from pathlib import Path

import numpy as np

from magicme.tiny.eval_models import save_tiny_clip, save_tiny_dino
from magicme.tiny.sparsectrl import save_png, save_sparsectrl_models

IDENTITIES = ("tinyperson", "tinywoman")  # the bundle's two identities (models/tiny/embeddings)
PHOTOS = 4
PHOTO_SIZE = 64


def synthetic_photo(rng: np.random.Generator, hue: np.ndarray, size: int = PHOTO_SIZE) -> np.ndarray:
    """A [0, 1] (size, size, 3) "portrait": a head-like ellipse of the identity's colour on a noisy ground, its
    position and size drawn from `rng`. Not a face (nothing real is shipped); enough to train and score on."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    cx, cy, r = rng.uniform(0.4, 0.6), rng.uniform(0.35, 0.55), rng.uniform(0.18, 0.3)
    head = ((xs - cx) / r) ** 2 + ((ys - cy) / (1.25 * r)) ** 2 <= 1.0
    image = 0.25 + 0.15 * rng.random((size, size, 3))
    image[head] = np.clip(hue + 0.1 * rng.standard_normal((int(head.sum()), 3)), 0, 1)
    return image.astype(np.float32)


def save_tiny_dataset(out: Path, seed: int = 0) -> dict[str, Path]:
    """`out/dataset/<identity>/0..3.png` for each tiny identity, in its own colour."""
    rng = np.random.default_rng(seed + 11)
    folders = {}
    for name in IDENTITIES:
        hue = rng.uniform(0.3, 1.0, 3)
        folder = out / "dataset" / name
        for i in range(PHOTOS):
            save_png(folder / f"{i}.png", synthetic_photo(rng, hue))
        folders[f"photos_{name}"] = folder
    return folders


def save_tiny_extras(out: Path | str, seed: int = 0) -> dict[str, Path]:
    """Everything of configs/tiny/ that is not in the model bundle, under `out` (the bundle's folder)."""
    out = Path(out)
    paths = save_sparsectrl_models(out, seed=seed)  # configs/tiny/sample_sparsectrl.yaml
    paths["eval_clip"] = save_tiny_clip(out / "eval" / "clip", seed=seed)  # configs/tiny/eval.yaml
    paths["eval_dino"] = save_tiny_dino(out / "eval" / "dino", seed=seed)
    paths.update(save_tiny_dataset(out, seed))
    return paths
