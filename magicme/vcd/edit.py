"""ID video editing: an input clip (MP4/GIF/frame folder) fitted to the configured size and frame count, partially
noised with the 3D prior (`strength` 0.6) and denoised with the ID prompt; the face and tiled stages may follow."""

import numpy as np
import torch

from magicme.errors import ConfigError
from magicme.vcd.config import stage_settings, validate_edit_config
from magicme.vcd.paste import resize_video
from magicme.video_io import read_video


def cover_crop(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize so the video covers `height`×`width` (aspect kept), then cut out the centre."""
    _, h, w, _ = video.shape
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    resized = resize_video(video, rh, rw)
    top, left = (rh - height) // 2, (rw - width) // 2
    return resized[:, top:top + height, left:left + width].copy()


def pick_frames(count: int, frames: int) -> np.ndarray:
    """`frames` indices spread evenly over a clip of `count` frames, first and last included."""
    return np.round(np.linspace(0, count - 1, frames)).astype(int)


def prepare_input_video(path, frames: int, height: int, width: int) -> np.ndarray:
    """The input clip as a (frames, height, width, 3) video; errors name `input_video` (or the size key)."""
    for key, value in (("height", height), ("width", width)):
        if value < 8 or value % 8:
            raise ConfigError(f"{key}: {value} must be a positive multiple of 8")
    if frames < 1:
        raise ConfigError(f"frames: {frames} must be at least 1")
    try:
        video = read_video(path)
    except ConfigError as err:
        raise ConfigError(f"input_video: {err}") from err
    if len(video) < frames:
        raise ConfigError(f"input_video: {path} has {len(video)} frames but frames={frames}; give a longer clip or "
                          f"set frames <= {len(video)}")
    return cover_crop(video[pick_frames(len(video), frames)], height, width)


def run_edit_stage(pipe, video: np.ndarray, prompt: str, negative_prompt: str, generator: torch.Generator, cfg,
                   *, steps: int | None = None, guidance_scale: float | None = None, gamma: float | None = None,
                   progress: bool = False) -> tuple[np.ndarray, dict]:
    """Partially re-generate `video` with the ID prompt. `cfg` is the `edit:` section."""
    section = validate_edit_config(cfg)
    settings = stage_settings(section, "edit", steps, guidance_scale, gamma)
    out = pipe.video_to_video(video, prompt, negative_prompt, generator, strength=section.strength,
                              progress=progress, **settings)
    return out, {"strength": section.strength, **settings}
