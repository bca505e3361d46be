"""Overlapping tiles that cover a frame exactly, smooth blending weights that sum to 1, and the seam figure.

Tiled VCD denoises each tile on its own, so neighbouring tiles disagree a little; a hard cut would show a seam.
Each tile's weight ramps smoothly from ~0 at an edge it shares with a neighbour to 1 across the overlap, and the
neighbour's ramp is its mirror image, so the weights of any pixel sum to 1 and the blend of identical tiles is the
input itself.
"""

import math

import numpy as np

Tile = tuple[int, int, int, int]  # (y0, x0, height, width)


def tile_layout(length: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """Tile size and start offsets covering [0, length) along one axis.

    The axis is cut into ceil(length / tile) parts, as the paper cuts 1024 px into two 512 px tiles, and each part
    is widened so neighbours share at least `overlap` px (size rounded up to a multiple of 8 for the VAE): 1024 px,
    tile 512, overlap 64 → two tiles of 544 px at 0 and 480. The first tile starts at 0, the last ends at `length`,
    the rest are evenly spaced. An axis no longer than `tile` is one tile of its own length.
    """
    count = math.ceil(length / tile)
    if count == 1:
        return length, [0]
    size = min(length, math.ceil((length + (count - 1) * overlap) / count / 8) * 8)
    return size, [round(i * (length - size) / (count - 1)) for i in range(count)]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """All tiles, row by row: `(y0, x0, tile_h, tile_w)`."""
    (th, ys), (tw, xs) = tile_layout(height, tile, overlap), tile_layout(width, tile, overlap)
    return [(y, x, th, tw) for y in ys for x in xs]


def smoothstep(t: np.ndarray) -> np.ndarray:
    """3t² − 2t³ on [0, 1]: smooth at both ends, and smoothstep(t) + smoothstep(1 − t) = 1."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def ramp_1d(starts: list[int], size: int, index: int) -> np.ndarray:
    """Weights along one axis of tile `index` of `size` px: smoothstep up across the overlap with the previous tile,
    down across the overlap with the next one, 1 elsewhere (and at the frame's own edges)."""
    pos = np.arange(size, dtype=np.float64) + 0.5  # pixel centres, relative to the tile's start
    weight = np.ones(size)
    if index > 0 and (overlap := starts[index - 1] + size - starts[index]) > 0:
        weight = np.minimum(weight, smoothstep(pos / overlap))
    if index < len(starts) - 1 and (overlap := starts[index] + size - starts[index + 1]) > 0:
        weight = np.minimum(weight, smoothstep((size - pos) / overlap))
    return weight


def tile_weights(height: int, width: int, tile: int, overlap: int) -> list[np.ndarray]:
    """One (tile_h, tile_w) weight map per tile of `tile_grid`, normalised so they sum to exactly 1 per pixel."""
    (th, ys), (tw, xs) = tile_layout(height, tile, overlap), tile_layout(width, tile, overlap)
    maps = [np.outer(ramp_1d(ys, th, i), ramp_1d(xs, tw, j)) for i in range(len(ys)) for j in range(len(xs))]
    total = np.zeros((height, width))
    for (y, x, h, w), m in zip(tile_grid(height, width, tile, overlap), maps):
        total[y:y + h, x:x + w] += m
    return [(m / total[y:y + h, x:x + w]).astype(np.float32)
            for (y, x, h, w), m in zip(tile_grid(height, width, tile, overlap), maps)]


def blend_tiles(outputs: list[np.ndarray], tiles: list[Tile], weights: list[np.ndarray],
                height: int, width: int) -> np.ndarray:
    """Weighted sum of per-tile videos (F, tile_h, tile_w, 3) into one (F, height, width, 3) video."""
    frames = outputs[0].shape[0]
    video = np.zeros((frames, height, width, 3), dtype=np.float32)
    for (y, x, h, w), out, weight in zip(tiles, outputs, weights):
        video[:, y:y + h, x:x + w] += out * weight[None, :, :, None]
    return video


def border_lines(length: int, size: int, starts: list[int]) -> list[int]:
    """Pixel boundaries inside (0, length) where a seam could show: each tile's edges and the middle of each
    overlap (where a hard stitch would cut)."""
    ends = [s + size for s in starts]
    middles = [(nxt + end) // 2 for nxt, end in zip(starts[1:], ends[:-1])]
    return sorted({line for line in starts + ends + middles if 0 < line < length})


def border_gradient_ratio(video: np.ndarray, tile: int, overlap: int) -> float:
    """Mean absolute gradient across the `border_lines` over the mean absolute gradient everywhere else.

    Gradients are differences of neighbouring pixels (horizontal ones across vertical lines and vice versa).
    """
    _, height, width, _ = video.shape
    dx = np.abs(np.diff(video, axis=2)).mean(axis=(0, 3))  # (H, W-1); index c-1 is the step from column c-1 to c
    dy = np.abs(np.diff(video, axis=1)).mean(axis=(0, 3))  # (H-1, W)
    at_x, at_y = np.zeros(dx.shape, bool), np.zeros(dy.shape, bool)
    at_x[:, [c - 1 for c in border_lines(width, *tile_layout(width, tile, overlap))]] = True
    at_y[[r - 1 for r in border_lines(height, *tile_layout(height, tile, overlap))], :] = True
    across = np.concatenate([dx[at_x], dy[at_y]])
    if across.size == 0:
        return 1.0
    elsewhere = np.concatenate([dx[~at_x], dy[~at_y]])
    return float(across.mean() / max(elsewhere.mean(), 1e-12))


def seam_ratio(video: np.ndarray, reference: np.ndarray, tile: int, overlap: int) -> float:
    """`border_gradient_ratio` of the blended video over that of the reference (the upscaled input), so the
    image's own edges near the lines cancel: 1 means no seam, 1.3 means 30 % more contrast across tile borders."""
    return border_gradient_ratio(video, tile, overlap) / border_gradient_ratio(reference, tile, overlap)
