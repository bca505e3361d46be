"""Tiled VCD: upscale the video ×`scale`, denoise overlapping tiles at low strength with the sample's ID prompt, and
cross-fade the tiles with smooth weights (UltimateSDUpscale-style: 2× of 512 = 4 tiles), then optionally sharpen.

Each tile window (a `tile`-px tile plus `padding` px of context on each side) is resized so its longer side is
`tile` px for denoising and back afterwards, as UltimateSDUpscale processes every padded tile at the tile size: the
model always sees the resolution it was trained at (512 for SD1.5), whatever the padding.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from magicme.stages import Stage, denoise_problems, installed, or_default, own_scheduler, register_stage
from magicme.vcd.geometry import tile_weight, tile_windows


@dataclass
class TiledConfig:
    scale: int = 2  # upscale factor
    upscaler: str = "lanczos"  # lanczos, or an ESRGAN-family model file (needs the optional `spandrel` package)
    tile: int = 512  # 2x of 512 = 4 tiles, as the paper
    padding: int = 32  # context px around each tile (ComfyUI graph: tile_padding 32); neighbours cross-fade over 2x
    strength: float = 0.2  # denoise 0.2
    steps: Optional[int] = None  # steps actually run (of a schedule of steps / strength); None = the run's steps
    guidance_scale: Optional[float] = None  # None = the run's
    gamma: Optional[float] = None  # None = the sample's γ
    scheduler: Optional[Any] = None  # {name, kwargs} as model.scheduler; None = the model's (graph: euler)
    sharpen: float = 0.0  # contrast-adaptive sharpening after blending (graph: ImageCASharpening+ 0.2); 0 = off


@register_stage
class TiledStage(Stage):
    name = "tiled"
    Config = TiledConfig

    @classmethod
    def check(cls, cfg):
        t, problems = cfg.tiled, []
        if t.upscaler != "lanczos":
            if not Path(t.upscaler).is_file():
                problems.append(f"tiled.upscaler: {t.upscaler} is neither 'lanczos' nor a file")
            elif not installed("spandrel"):
                problems.append("tiled.upscaler: model files need `pip install spandrel` (it needs torchvision); "
                                "or use tiled.upscaler=lanczos")
            else:
                problems += upscaler_file_problems(t.upscaler)
        checks = [
            (t.scale in (1, 2, 3, 4), f"tiled.scale: {t.scale} not one of 1, 2, 3, 4"),
            (t.tile >= 64 and t.tile % 8 == 0, f"tiled.tile: {t.tile} must be a multiple of 8 >= 64"),
            (0 <= t.padding < t.tile // 2 and t.padding % 8 == 0,
             f"tiled.padding: {t.padding} must be a multiple of 8 in [0, tile/2)"),
            (0.0 <= t.sharpen <= 1.0, f"tiled.sharpen: {t.sharpen} not in [0, 1]"),
        ]
        return problems + [message for ok, message in checks if not ok] + denoise_problems("tiled", t, cfg.steps)

    def setup(self, pipe) -> None:
        """The upscaler (a model file is read once, not once per video) and the stage's own scheduler."""
        from magicme.upscale import Upscaler

        s = self.settings
        self.upscaler = Upscaler(s.upscaler, pipe.device)
        self.scheduler = own_scheduler(pipe, "tiled.scheduler", s.scheduler)

    def __call__(self, pipe, video, sample, generator):
        from magicme.vcd.resize import resize_video
        from magicme.vcd.sharpen import cas_sharpen

        s = self.settings
        big = self.upscaler(video, s.scale)

        numbers = iter(range(1, 10 ** 9))

        def denoise(window: np.ndarray) -> np.ndarray:
            h, w = window.shape[1:3]
            th, tw = tile_size(h, w, s.tile)
            refined = pipe.video_to_video(
                resize_video(window, th, tw, pipe.device), sample.prompt, sample.negative_prompt, generator,
                gamma=or_default(s.gamma, sample.gamma), strength=s.strength, steps=or_default(s.steps, self.run.steps),
                guidance_scale=or_default(s.guidance_scale, self.run.guidance_scale), scheduler=self.scheduler,
                progress=self.progress, desc=f"tiled, tile {next(numbers)}",
            )
            return resize_video(refined, h, w, pipe.device)

        out = cas_sharpen(blend_tiles(big, s.tile, s.padding, denoise), s.sharpen, pipe.device)
        rows, cols = (len(tile_windows(n, s.tile, s.padding)) for n in big.shape[1:3])
        return out, {"tiles": rows * cols}


def tile_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """The size a window is denoised at: its longer side `tile` px, aspect kept, both sides multiples of 8."""
    scale = tile / max(height, width)
    return max(8, round(height * scale / 8) * 8), max(8, round(width * scale / 8) * 8)


def upscaler_file_problems(path: str) -> list[str]:
    """An upscaler file must at least be a readable checkpoint (read from its header / memory-mapped)."""
    from magicme.errors import ConfigError
    from magicme.inspector import tensor_shapes

    try:
        tensor_shapes(path)
    except ConfigError as err:
        return [f"tiled.upscaler: {err}"]
    return []


def blend_tiles(video: np.ndarray, tile: int, padding: int, denoise, ramp: int | None = None) -> np.ndarray:
    """Denoise padded tiles and cross-fade them with smooth weights normalised by their sum; the weights ramp up
    over `ramp` px (default: the 2·padding the neighbours share; 0 = plain averaging)."""
    h, w = video.shape[1:3]
    acc = np.zeros_like(video)
    total = np.zeros((h, w, 1), dtype=np.float32)
    for y0, y1 in tile_windows(h, tile, padding):
        for x0, x1 in tile_windows(w, tile, padding):
            weight = tile_weight(y1 - y0, x1 - x0, 2 * padding if ramp is None else ramp)[..., None]
            acc[:, y0:y1, x0:x1] += denoise(video[:, y0:y1, x0:x1]) * weight
            total[y0:y1, x0:x1] += weight
    return acc / total
