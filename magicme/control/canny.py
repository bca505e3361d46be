"""Canny edges in numpy, computing what OpenCV's `cv2.Canny(image, low, high)` computes (aperture 3, L1 gradient),
so a ControlNet trained on OpenCV's edges (ControlNet's canny annotator runs `cv2.Canny` on the RGB frame) sees the
same edges without OpenCV installed.

The steps, each a small function below:
1. `sobel`: 3×3 Sobel derivatives of every channel, borders replicated (OpenCV's BORDER_REPLICATE);
2. `strongest_channel`: per pixel, the derivatives of the channel with the largest |dx| + |dy| (the first on ties);
3. `thin`: non-maximum suppression along the gradient direction, quantised to 4 directions with OpenCV's integer
   test (tan 22.5° in 15-bit fixed point; ≥ on one side, > on the other for horizontal and vertical neighbours, > on
   both for diagonal ones; the magnitude outside the image is 0);
4. `hysteresis`: pixels above `low` that passed (3) are edges when their 8-connected group holds one above `high`.
"""

import numpy as np
from scipy import ndimage

TAN22 = 13573  # round(tan(22.5°) · 2^15), as OpenCV's canny.cpp
SHIFT = 15


def sobel(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dy) int64 of an (H, W, C) image: the 3×3 Sobel kernels, the border replicated."""
    p = np.pad(image.astype(np.int64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    horizontal = p[:, 2:] - p[:, :-2]  # (H + 2, W, C): right − left
    vertical = p[2:] - p[:-2]  # (H, W + 2, C): below − above
    dx = horizontal[:-2] + 2 * horizontal[1:-1] + horizontal[2:]
    dy = vertical[:, :-2] + 2 * vertical[:, 1:-1] + vertical[:, 2:]
    return dx, dy


def strongest_channel(dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dy, |dx| + |dy|) of (H, W) of the channel with the largest L1 magnitude at each pixel."""
    magnitude = np.abs(dx) + np.abs(dy)
    pick = magnitude.argmax(axis=2)[..., None]  # argmax takes the first of equal values, like OpenCV's strict >
    return (np.take_along_axis(dx, pick, 2)[..., 0], np.take_along_axis(dy, pick, 2)[..., 0],
            np.take_along_axis(magnitude, pick, 2)[..., 0])


def thin(dx: np.ndarray, dy: np.ndarray, magnitude: np.ndarray, low: int) -> np.ndarray:
    """Pixels above `low` whose magnitude is a maximum along their gradient direction (OpenCV's test)."""
    m = np.pad(magnitude, 1)  # 0 outside the image
    h, w = magnitude.shape

    def at(row: int, col: int) -> np.ndarray:  # the neighbour at offset (row, col) of every pixel
        return m[1 + row:1 + row + h, 1 + col:1 + col + w]

    x, y = np.abs(dx), np.abs(dy) << SHIFT
    tan22x = x * TAN22
    horizontal = y < tan22x
    vertical = ~horizontal & (y > tan22x + (x << (SHIFT + 1)))
    diagonal = ~horizontal & ~vertical
    same_sign = (dx ^ dy) >= 0  # OpenCV: s = (dx ^ dy) < 0 ? -1 : 1
    keep = np.where(horizontal, (magnitude > at(0, -1)) & (magnitude >= at(0, 1)), False)
    keep |= vertical & (magnitude > at(-1, 0)) & (magnitude >= at(1, 0))
    keep |= diagonal & same_sign & (magnitude > at(-1, -1)) & (magnitude > at(1, 1))
    keep |= diagonal & ~same_sign & (magnitude > at(-1, 1)) & (magnitude > at(1, -1))
    return keep & (magnitude > low)


def hysteresis(candidates: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """The candidate pixels 8-connected (through candidates) to a strong one."""
    groups, _ = ndimage.label(candidates, structure=np.ones((3, 3), dtype=bool))
    return np.isin(groups, np.unique(groups[strong & candidates])) & candidates


def canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) bool edges of a uint8 (H, W) or (H, W, C) image; thresholds on |dx| + |dy| of the 3×3 Sobel, floored
    and swapped when low > high, as OpenCV does."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"canny needs a uint8 (H, W) or (H, W, C) image, got {image.dtype} {image.shape}")
    low, high = sorted((int(np.floor(low)), int(np.floor(high))))
    dx, dy, magnitude = strongest_channel(*sobel(image.reshape(*image.shape[:2], -1)))
    candidates = thin(dx, dy, magnitude, low)
    return hysteresis(candidates, magnitude > high)


def canny_video(video: np.ndarray, low: float, high: float) -> np.ndarray:
    """A ControlNet canny input: float32 (F, H, W, 3) in {0, 1}, white edges on black, of a [0, 1] RGB video (each
    frame quantised to uint8 as a saved frame would be)."""
    frames = np.clip(np.round(video * 255.0), 0, 255).astype(np.uint8)
    edges = np.stack([canny(frame, low, high) for frame in frames])
    return np.repeat(edges[..., None], 3, axis=3).astype(np.float32)
