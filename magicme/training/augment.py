"""Magic-Me's training augmentations: geometry applied to an image and its person mask together, and the caption
prefixes that tell the model how far away the person is.

Faithful to the original `masked_dataset.py`, step by step: centre square crop; horizontal flip (p = 0.5); rotation
by an angle ~ N(0, σ = 10°) (intended p = 0.3; the original's inverted test fires at p = 0.7, reachable with
`original_rotate_bug`); then a random scale s: with p = 2/3 s ∈ [size/3, size], else s ∈ [1.2·size, 1.4·size),
rounded up to even. s < 0.6·size shrinks the picture onto a mid-grey canvas ("a far away " / "very small ");
s > size crops a window of the enlarged picture ("zoomed in " / "close up "); otherwise a plain resize.

SD-XL is conditioned on where its training image came from (original size, crop top-left, target size);
`micro_conditioning` reads them off the same draw, so SD-XL identities are trained on what was really shown.
"""

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from magicme.prompts import fill_identity

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
        if rng.randrange(3) < 2:  # zoom out (or no zoom, above 0.6·size)
            scale = rng.randint(size // 3, size)
        else:  # zoom in
            scale = rng.randint(int(1.2 * size), int(1.4 * size) - 1)
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


def apply_geometry(image: torch.Tensor, geometry: Geometry, size: int, canvas_fill: torch.Tensor) -> torch.Tensor:
    """Apply one draw to a square (C, H, W) tensor → (C, size, size), on whatever device it lives.

    Flip, rotation about the centre (uncovered corners become 0: black, as in the original), an antialiased bicubic
    resize to `scale` (the original resized bicubic), then a paste onto a canvas of `canvas_fill` (C,) or a crop of
    a window. The photo and its mask travel together as channels of one tensor, so they cannot drift apart.
    """
    x = image[None].float()
    if geometry.flip:
        x = x.flip(-1)
    if geometry.angle:
        a = math.radians(geometry.angle)
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], device=x.device)
        grid = F.affine_grid(theta[None], list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = F.interpolate(x, size=(geometry.scale, geometry.scale), mode="bicubic", antialias=True, align_corners=False)[0]
    r, c = geometry.offset
    if geometry.scale < size:
        canvas = canvas_fill.to(x)[:, None, None].repeat(1, size, size)
        canvas[:, r:r + geometry.scale, c:c + geometry.scale] = x
        return canvas
    return x[:, r:r + size, c:c + size]


def caption_for(template: str, identity: str, prefix: str) -> str:
    """`photo of a {id}` + `<ann> <ann>_1 man` + `close up ` → `close up photo of a <ann> <ann>_1 man`."""
    return prefix + fill_identity(template, identity)


def micro_conditioning(photo_size: tuple[int, int], geometry: Geometry, size: int) -> tuple[int, ...]:
    """SD-XL's six `time_ids` for one draw on a photo of `photo_size` (H, W): (original H, W, crop top, left,
    target H, W), with the crop in the pixels of the whole photo scaled as the draw scaled it, as SD-XL was trained
    (original size before any resize, crop in resized pixels).

    The crop is the centre square crop (mirrored by a flip) plus, when zoomed in (s ≥ size), the window's offset. A
    zoom-out pastes the whole square onto a canvas: nothing more is cut off, so only the centre crop counts. Rotation
    (about the centre, ≤ a few degrees) is not a crop and changes nothing here.
    """
    height, width = photo_size
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    if geometry.flip:
        left = width - side - left  # the square's left edge in the mirrored photo
    factor = geometry.scale / side
    row, col = round(top * factor), round(left * factor)
    if geometry.scale >= size:
        row, col = row + geometry.offset[0], col + geometry.offset[1]
    return height, width, row, col, size, size
