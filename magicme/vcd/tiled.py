"""Tiled VCD: upscale ×`scale`, denoise overlapping `tile`² tiles lightly (`strength` 0.2, 3D prior noise) with the
ID prompt, and blend them with smooth weights that sum to 1 (no seams; see `tiles.py`).

Blending is in pixel space after each tile's full (partial) denoise: `video_to_video` stays one diffusers call per
tile. Blending latents at every step would need our own denoising loop; it was not tried (docs/vcd.md).
"""

import numpy as np
import torch

from magicme.vcd.config import stage_settings, validate_tiled_config
from magicme.vcd.tiles import blend_tiles, tile_grid, tile_weights
from magicme.vcd.upscale import upscale_video


def run_tiled_stage(pipe, video: np.ndarray, prompt: str, negative_prompt: str, generator: torch.Generator, cfg,
                    *, steps: int | None = None, guidance_scale: float | None = None, gamma: float | None = None,
                    progress: bool = False) -> tuple[np.ndarray, dict]:
    """The upscaled, tile-refined video and what was done. `cfg` is the `tiled:` section; `steps`,
    `guidance_scale`, `gamma` are the run's values, used where the section leaves them null."""
    section = validate_tiled_config(cfg)
    settings = stage_settings(section, "tiled", steps, guidance_scale, gamma)
    upscaled = upscale_video(video, section.scale, section.upscaler, str(pipe.device))
    _, height, width, _ = upscaled.shape
    tiles = tile_grid(height, width, section.tile, section.overlap)
    outputs = [pipe.video_to_video(np.ascontiguousarray(upscaled[:, y:y + h, x:x + w]), prompt, negative_prompt,
                                   generator, strength=section.strength, progress=progress, **settings)
               for y, x, h, w in tiles]
    blended = blend_tiles(outputs, tiles, tile_weights(height, width, section.tile, section.overlap), height, width)
    info = {"upscaler": section.upscaler, "height": height, "width": width, "tiles": [list(t) for t in tiles]}
    return np.clip(blended, 0.0, 1.0), info
