"""Cropping a square out of every frame, resizing videos, and pasting a denoised crop back with a feathered mask."""

import numpy as np
from PIL import Image


def resize_video(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Lanczos-resize every frame of a float video (kept in float: no uint8 rounding); same size → a copy."""
    if video.shape[1:3] == (height, width):
        return video.copy()
    out = np.empty((video.shape[0], height, width, video.shape[3]), dtype=np.float32)
    for f, frame in enumerate(video):
        for c in range(frame.shape[2]):
            channel = Image.fromarray(np.ascontiguousarray(frame[:, :, c], dtype=np.float32))
            out[f, :, :, c] = np.asarray(channel.resize((width, height), Image.Resampling.LANCZOS))
    return np.clip(out, 0.0, 1.0)  # Lanczos rings slightly past the input's range


def feather_mask(height: int, width: int, region: tuple[int, int, int, int], feather: int) -> np.ndarray:
    """(height, width) weights: 0 outside `region` (x0, y0, x1, y1), rising linearly to 1 over `feather` px inside
    it. Edges of the region that lie on the frame's edge are not feathered (there is nothing to blend into)."""
    x0, y0, x1, y1 = region
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    inf = np.inf

    def ramp(pos: np.ndarray, lo: int, hi: int, size: int) -> np.ndarray:
        inside = (pos > lo) & (pos < hi)
        dist = np.minimum(pos - lo if lo > 0 else inf, hi - pos if hi < size else inf)
        weight = np.ones_like(pos) if feather == 0 else np.clip(dist / feather, 0.0, 1.0)
        return np.where(inside, weight, 0.0)

    return np.minimum.outer(ramp(ys, y0, y1, height), ramp(xs, x0, x1, width)).astype(np.float32)


def crop(video: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return video[:, y0:y1, x0:x1].copy()


def paste(video: np.ndarray, patch: np.ndarray, box: tuple[int, int, int, int], mask: np.ndarray) -> np.ndarray:
    """`video` with `patch` (covering `box`) mixed in by the full-frame `mask`. Where the mask is 0 the result is
    exactly `video`, where it is 1 exactly `patch` (no float round-off), linear in between."""
    x0, y0, x1, y1 = box
    out = video.copy()
    m = mask[y0:y1, x0:x1][None, :, :, None]
    under = video[:, y0:y1, x0:x1]
    out[:, y0:y1, x0:x1] = np.where(m == 1.0, patch, under + m * (patch - under))
    return out
