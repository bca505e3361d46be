"""Training photos and their person masks, and the augmented batches the loop trains on.

Photos are decoded once, when the config is checked (`read_photos`), and kept as uint8 centre crops.
Masks come from CLIPSeg with the config's `mask_prompt`, once per image: they are cached on disk under a key made
of the image's bytes, the prompt, the model and the threshold, so a second run (or a resumed one) reuses them.

Every random draw of step k (which photos, their augmentation, the diffusion noise) comes from a generator seeded
by (seed, k): a batch is a pure function of the step, so resuming at step k needs no generator state, and the
same config always trains the same way.
"""

import hashlib
import logging
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from magicme.errors import ConfigError
from magicme.images import read_image
from magicme.training.augment import apply_geometry, caption_for, draw_geometry, micro_conditioning
from magicme.video_io import atomic_path, to_uint8

log = logging.getLogger("magicme.train")
# canvas colour of a shrunk picture per channel (RGB mid-grey = 0 in the VAE's [-1, 1]; mask 0 = no person)
CANVAS_FILL = (0.5, 0.5, 0.5, 0.0)


def derive_seed(*keys) -> int:
    """A 63-bit seed from (seed, purpose, step, …): independent streams without carrying generator states."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, keys)).encode()).digest()[:8], "big") >> 1


def working_size(resolution: int) -> int:
    """Side the photos are kept at: the largest zoom-in draws 1.4·resolution, so nothing finer is ever used."""
    return int(1.4 * resolution) + 1


@dataclass
class TrainImage:
    path: Path
    pixels: np.ndarray  # (S, S, 3) float32 in [0, 1], centre-cropped square at working size
    mask: np.ndarray  # (S, S) float32 in {0, 1}
    original_size: tuple[int, int] | None = None  # the photo's (H, W) before its centre crop; None: the square itself

    def photo_size(self) -> tuple[int, int]:
        return self.original_size or self.pixels.shape[:2]


@dataclass
class Photo:
    """A training photo as decoded when the config was checked: its centre square crop at full resolution."""

    path: Path
    crop: np.ndarray  # (S, S, 3) uint8: a quarter of float32's memory, and float32 / 255 gives the same values back
    size: tuple[int, int]  # (H, W) of the photo before the crop (SD-XL's original-size conditioning)

    def pixels(self) -> np.ndarray:
        """(S, S, 3) float32 in [0, 1], exactly as `magicme.images.read_image` decoded it."""
        return self.crop.astype(np.float32) / 255.0


def read_photos(paths: list[Path]) -> list[Photo]:
    """Decode every photo (a broken file or a decompression bomb is a ConfigError naming it) and crop it square."""
    return [cropped_photo(path, read_image(path, "training photo")) for path in paths]


def cropped_photo(path: Path, image: np.ndarray) -> Photo:
    return Photo(path, to_uint8(square_crop(image)), image.shape[:2])


def square_crop(image: np.ndarray) -> np.ndarray:
    """Centre square crop, as the original does before anything else."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def resize_square(image: np.ndarray, side: int, resample: Image.Resampling) -> np.ndarray:
    """(S, S) or (S, S, C) float image → side × side, channel by channel (PIL float mode keeps full precision)."""
    planes = image[..., None] if image.ndim == 2 else image
    out = np.stack([np.asarray(Image.fromarray(planes[..., c]).resize((side, side), resample), dtype=np.float32)
                    for c in range(planes.shape[-1])], axis=-1)
    return out[..., 0] if image.ndim == 2 else out


def mask_cache_key(path: Path, prompt: str, model_identity: str, threshold: float) -> str:
    digest = hashlib.sha256(path.read_bytes())
    digest.update(f"|{prompt}|{model_identity}|{threshold}".encode())
    return digest.hexdigest()[:32]


def load_training_images(photos: list[Photo], segmenter_factory, model_id: str, prompt: str, threshold: float,
                         cache_dir: Path, side: int) -> list[TrainImage]:
    """Get every photo's person mask (cached), skip photos whose mask is empty, with a warning each.

    `segmenter_factory()` returns a `ClipSegSegmenter`; it is called (the model loaded) only if some mask is not
    cached yet. `model_id` is `magicme.segmentation.model_identity` of that model, part of the cache key. Photos and
    masks are kept at `side` × `side` (`working_size`).
    """
    segmenter = None
    result = []
    for photo in photos:
        path, image = photo.path, photo.pixels()
        cache = cache_dir / f"{mask_cache_key(path, prompt, model_id, threshold)}.png"
        if cache.is_file():
            mask = np.asarray(Image.open(cache), dtype=np.float32) / 255.0
        else:
            segmenter = segmenter or segmenter_factory()
            mask = (segmenter.probabilities(image[None], prompt)[0] >= threshold).astype(np.float32)
            with atomic_path(cache) as tmp:
                Image.fromarray(to_uint8(mask)).save(tmp, format="PNG")
        if mask.sum() == 0:
            log.warning("%s: the mask for %r is empty; skipping this image", path, prompt)
            continue
        image = np.clip(resize_square(image, side, Image.Resampling.LANCZOS), 0.0, 1.0)
        mask = (resize_square(mask, side, Image.Resampling.BILINEAR) >= 0.5).astype(np.float32)
        result.append(TrainImage(path, image, mask, photo.size))
    if not result:
        raise ConfigError(f"mask_prompt: CLIPSeg found no {prompt!r} in any training image; check the photos or "
                          "lower mask_threshold")
    return result


def save_overlays(folder: Path, images: list[TrainImage]) -> None:
    """Each photo with everything outside its mask dimmed (what the loss will see), as `<photo name>.png`."""
    for image in images:
        shown = image.pixels * (0.25 + 0.75 * image.mask[..., None])
        with atomic_path(folder / f"{image.path.stem}.png") as tmp:
            Image.fromarray(to_uint8(shown)).save(tmp, format="PNG")


def example_indices(step: int, batch_size: int, count: int, seed: int) -> list[int]:
    """The photos of step `step`: its slots in an endless run of shuffled epochs, each a seeded permutation."""
    indices = []
    for slot in range(step * batch_size, (step + 1) * batch_size):
        epoch, position = divmod(slot, count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(derive_seed(seed, "order", epoch)))
        indices.append(int(order[position]))
    return indices


@dataclass
class Batch:
    pixels: torch.Tensor  # (B, 3, size, size) in [-1, 1], the VAE's range
    masks: torch.Tensor  # (B, size, size) in {0, 1}; all ones (within the picture) for a full-image loss
    captions: list[str]
    time_ids: torch.Tensor  # (B, 6) SD-XL micro-conditioning of each example (`augment.micro_conditioning`)


class TrainingBatches:
    """Augmented batches, drawn exactly as the original's dataset draws them, computed on `device`."""

    def __init__(self, images: list[TrainImage], cfg, tokens: str, seed: int, device: torch.device):
        stacked = np.stack([np.concatenate([im.pixels, im.mask[..., None]], axis=-1) for im in images])
        self.images = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous().to(device)  # (N, RGB+mask, S, S)
        self.photo_sizes = [im.photo_size() for im in images]
        self.cfg, self.tokens, self.seed = cfg, tokens, seed
        self.fill = torch.tensor(CANVAS_FILL, device=device)

    def __call__(self, step: int) -> Batch:
        cfg, a = self.cfg, self.cfg.augment
        rng = random.Random(derive_seed(self.seed, "augment", step))
        pixels, masks, captions, time_ids = [], [], [], []
        for i in example_indices(step, cfg.batch_size, len(self.images), self.seed):
            source = self.images[i]
            if rng.random() < cfg.use_orig_img_rate:  # full-image loss: the mask covers the whole photo
                source = torch.cat([source[:3], torch.ones_like(source[3:])])
            geometry = draw_geometry(rng, cfg.resolution, a.flip_p, a.rotate_p, a.rotate_sigma,
                                     a.original_rotate_bug, a.zoom)
            out = apply_geometry(source, geometry, cfg.resolution, self.fill)
            pixels.append(out[:3].clamp(0.0, 1.0) * 2.0 - 1.0)
            masks.append((out[3] >= 0.5).float())
            captions.append(caption_for(cfg.caption_template, self.tokens, geometry.prefix))
            time_ids.append(micro_conditioning(self.photo_sizes[i], geometry, cfg.resolution))
        return Batch(torch.stack(pixels), torch.stack(masks), captions, torch.tensor(time_ids, dtype=torch.float32))


def caption_ids(tokenizer):
    """Token ids of a caption, cached: a run uses only a handful of distinct captions (five prefixes)."""

    @lru_cache(maxsize=64)
    def encode(caption: str) -> torch.Tensor:
        return tokenizer(caption, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                         return_tensors="pt").input_ids[0]

    return lambda captions: torch.stack([encode(c) for c in captions])
