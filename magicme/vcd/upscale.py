"""The ×`scale` upscale in front of Tiled VCD: Lanczos, or an ESRGAN-family model file through `spandrel`.

The original graph used 4x-UltraSharp (an ESRGAN model) resized down to ×2. spandrel needs torchvision, so it is an
optional import: a configured model file without spandrel is a `ConfigError`, never a silent fallback.
"""

import functools

import numpy as np
import torch

from magicme.errors import ConfigError
from magicme.vcd.paste import resize_video


def upscaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """`scale` × the size, rounded to multiples of 8 (the VAE downsamples by 8)."""
    return max(8, round(height * scale / 8) * 8), max(8, round(width * scale / 8) * 8)


@functools.lru_cache(maxsize=1)
def _load_model(path: str, device: str):
    try:
        import spandrel
    except ImportError as err:
        raise ConfigError(f"tiled.upscaler: {path} needs spandrel (pip install spandrel; it requires torchvision), "
                          "or set tiled.upscaler=lanczos") from err
    try:
        model = spandrel.ModelLoader().load_from_file(path)
    except Exception as err:  # spandrel raises several types for unknown architectures and bad files
        raise ConfigError(f"tiled.upscaler: cannot load {path} as an upscaler model ({err})") from err
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise ConfigError(f"tiled.upscaler: {path} is not a single-image upscaler model")
    return model.to(device).eval()


def model_upscale(video: np.ndarray, path: str, device: str) -> np.ndarray:
    """Every frame through the model (its own ×N), at full float precision."""
    model = _load_model(path, device)
    frames = []
    for frame in video:
        image = torch.from_numpy(frame).permute(2, 0, 1)[None].to(device, next(model.model.parameters()).dtype)
        frames.append(model(image)[0].permute(1, 2, 0).float().cpu().numpy())
    return np.clip(np.stack(frames), 0.0, 1.0)


def upscale_video(video: np.ndarray, scale: float, upscaler: str = "lanczos", device: str = "cpu") -> np.ndarray:
    """(F, H, W, 3) → (F, H', W', 3) with H', W' = `upscaled_size`; a model's output is Lanczos-resized to that."""
    height, width = upscaled_size(video.shape[1], video.shape[2], scale)
    if upscaler != "lanczos":
        video = model_upscale(video, upscaler, device)
    return resize_video(video, height, width)
