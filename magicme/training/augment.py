"""Magic-Me's training augmentations: geometry applied to an image and its person mask together, and the caption
prefixes that tell the model how far away the person is.

Faithful to the original `masked_dataset.py`, step by step: centre square crop; horizontal flip (p = 0.5); rotation
by an angle ~ N(0, σ = 10°) (intended p = 0.3; the original's inverted test fires at p = 0.7, reachable with
`original_rotate_bug`); then a random scale s: with p = 2/3 s ∈ [size/3, size], else s ∈ [1.2·size, 1.4·size),
rounded up to even. s < 0.6·size shrinks the picture onto a mid-grey canvas ("a far away " / "very small ");
s > size crops a window of the enlarged picture ("zoomed in " / "close up "); otherwise a plain resize.
"""

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

FAR_PREFIXES = ("a far away ", "very small ")
CLOSE_PREFIXES = ("zoomed in ", "close up ")


@dataclass(frozen=True)
class Geometry:
    """Every random choice of one augmentation draw; applying it to image and mask keeps them aligned."""

    flip: bool
    angle: float  # degrees, counter-clockwise; 0 = no rotation
    scale: int  # side of the picture after scaling, in pixels
    offset: tuple[int, int]  # (row, col) of the picture's top-left on the canvas (s ≤ size) or window (s > size)
    prefix: str


def draw_geometry(rng: random.Random, size: int, flip_p: float = 0.5, rotate_p: float = 0.3,
                  rotate_sigma: float = 10.0, original_rotate_bug: bool = False, zoom: bool = True) -> Geometry:
    flip = rng.random() < flip_p
    rotate = (rng.random() > rotate_p) if original_rotate_bug else (rng.random() < rotate_p)
    angle = rng.gauss(0.0, rotate_sigma) if rotate else 0.0
    scale = size
    if zoom:
        scale = rng.randint(size // 3, size) if rng.randrange(3) < 2 else rng.randint(int(1.2 * size), int(1.4 * size) - 1)
        scale += scale % 2
    prefix, offset = "", (0, 0)
    if scale < 0.6 * size:
        prefix = rng.choice(FAR_PREFIXES)
        offset = (rng.randint(0, size - scale), rng.randint(0, size - scale))
    elif scale > size:
        prefix = rng.choice(CLOSE_PREFIXES)
        offset = (rng.randint(0, scale - size), rng.randint(0, scale - size))
    else:
        scale = size  # between 0.6·size and size the original resizes plainly to size
    return Geometry(flip, angle, scale, offset, prefix)


def square_crop(image: np.ndarray) -> np.ndarray:
    """Centre square crop, as the original does before anything else."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def apply_geometry(image: np.ndarray, geometry: Geometry, size: int, rotate_fill: float = 0.0,
                   canvas_fill: float = 0.0) -> np.ndarray:
    """Apply one draw to a square float image (H, W, C) → (size, size, C).

    As in the original, corners uncovered by a rotation are black (0) and the canvas around a shrunk picture is
    mid-grey (0.5, i.e. zero in the VAE's [-1, 1] range); masks use 0 for both: the person is not there.
    """
    channels = image.shape[2]
    planes = []
    for c in range(channels):
        plane = Image.fromarray(image[..., c].astype(np.float32))
        if geometry.flip:
            plane = plane.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if geometry.angle:
            plane = plane.rotate(geometry.angle, resample=Image.Resampling.BILINEAR, fillcolor=rotate_fill)
        plane = plane.resize((geometry.scale, geometry.scale), Image.Resampling.BILINEAR)
        planes.append(np.asarray(plane, dtype=np.float32))
    scaled = np.stack(planes, axis=-1)
    r, c = geometry.offset
    if geometry.scale < size:
        canvas = np.full((size, size, channels), canvas_fill, dtype=np.float32)
        canvas[r:r + geometry.scale, c:c + geometry.scale] = scaled
        return canvas
    return scaled[r:r + size, c:c + size]


def caption_for(template: str, tokens: str, prefix: str) -> str:
    """`photo of a {}` + `<ann> <ann>_1 man` + `close up ` → `close up photo of a <ann> <ann>_1 man`."""
    return prefix + template.format(tokens)
