"""Tiled VCD: upscale the video ×`scale`, denoise overlapping tiles of `tile` px at low strength with the sample's
ID prompt, and cross-fade the tiles with smooth weights (UltimateSDUpscale-style: 2× of 512 = 4 tiles)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from magicme.stages import Stage, denoise_problems, installed, or_default, register_stage
from magicme.vcd.geometry import tile_weight, tile_windows


@dataclass
class TiledConfig:
    scale: int = 2  # upscale factor
    upscaler: str = "lanczos"  # lanczos, or an ESRGAN-family model file (needs the optional `spandrel` package)
    tile: int = 512  # 2x of 512 = 4 tiles, as the paper
    padding: int = 32  # context px around each tile (ComfyUI graph: tile_padding 32); neighbours cross-fade over 2x
    strength: float = 0.2  # denoise 0.2
    steps: Optional[int] = None  # None = the run's steps
    guidance_scale: Optional[float] = None  # None = the run's
    gamma: Optional[float] = None  # None = the sample's γ


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
        ]
        return problems + [message for ok, message in checks if not ok] + denoise_problems("tiled", t)

    def setup(self, pipe) -> None:
        """The upscaler, loaded once per run (a model file is read once, not once per video)."""
        from magicme.upscale import Upscaler

        self.upscaler = Upscaler(self.settings.upscaler, pipe.device)

    def __call__(self, pipe, video, sample, generator):
        s = self.settings
        big = self.upscaler(video, s.scale)

        def denoise(tile: np.ndarray) -> np.ndarray:
            return pipe.video_to_video(
                tile, sample.prompt, sample.negative_prompt, generator, gamma=or_default(s.gamma, sample.gamma),
                strength=s.strength, steps=or_default(s.steps, self.run.steps),
                guidance_scale=or_default(s.guidance_scale, self.run.guidance_scale), progress=False,
            )

        out = blend_tiles(big, s.tile, s.padding, denoise)
        rows, cols = (len(tile_windows(n, s.tile, s.padding)) for n in big.shape[1:3])
        return out, {"tiles": rows * cols}


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
