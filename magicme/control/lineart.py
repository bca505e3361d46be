"""Lineart in numpy: sd-webui-controlnet's `lineart_standard` annotator, the one of ControlNet's lineart
preprocessors that is a formula rather than a network, so ControlNet v1.1 lineart sees the lines it is used with
without OpenCV or annotator weights.

Per pixel: how much darker than its neighbourhood (a Gaussian blur, σ = 6) the pixel is, in its least-darkened
channel; these darkness values are divided by their median over the pixels darker by more than 8 (at least 16), so
typical lines come out mid-grey (×127) and strong ones saturate. White lines on black, as ControlNet lineart expects;
a flat image has no lines. The blur is OpenCV's `GaussianBlur(x, (0, 0), σ)`: a 49-tap kernel (radius ⌊4σ⌉) and
mirrored borders (BORDER_REFLECT_101).
"""

import numpy as np

SIGMA = 6.0
THRESHOLD = 8.0  # darkness (of 255) counted in the median
FLOOR = 16.0  # the median is at least this, so faint texture on a flat image is not blown up
GAIN = 127.0


def gaussian_kernel(sigma: float) -> np.ndarray:
    """OpenCV's Gaussian for float images: ksize = round(8σ + 1) made odd, weights exp(−x²/2σ²) summing to 1."""
    size = int(np.round(sigma * 8 + 1)) | 1
    x = np.arange(size) - (size - 1) / 2
    weights = np.exp(-x ** 2 / (2 * sigma ** 2))
    return weights / weights.sum()


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) float64 image, borders mirrored without repeating the edge pixel."""
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    h, w = image.shape[:2]
    rows = sum(k * padded[i:i + h] for i, k in enumerate(kernel))
    return sum(k * rows[:, i:i + w] for i, k in enumerate(kernel))


def darkness(image: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """(H, W) float64: blur − pixel in the channel where it is smallest, clipped to [0, 255], of a uint8 image."""
    x = image.reshape(*image.shape[:2], -1).astype(np.float64)
    return np.clip((blur(x, sigma) - x).min(axis=2), 0, 255)


def lineart(image: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """(H, W) uint8 lines (white on black) of a uint8 (H, W) or (H, W, C) image."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"lineart needs a uint8 (H, W) or (H, W, C) image, got {image.dtype} {image.shape}")
    dark = darkness(image, sigma)
    counted = dark[dark > THRESHOLD]
    scale = max(FLOOR, float(np.median(counted))) if counted.size else FLOOR
    return np.clip(dark / scale * GAIN, 0, 255).astype(np.uint8)


def lineart_video(video: np.ndarray) -> np.ndarray:
    """A ControlNet lineart input: float32 (F, H, W, 3) in [0, 1] of a [0, 1] RGB video (frames quantised to uint8 as
    a saved frame would be)."""
    frames = np.clip(np.round(video * 255.0), 0, 255).astype(np.uint8)
    lines = np.stack([lineart(frame) for frame in frames]).astype(np.float32) / 255.0
    return np.repeat(lines[..., None], 3, axis=3)
