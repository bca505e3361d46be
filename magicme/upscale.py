"""Upscaling a video by an integer factor: Lanczos, or an ESRGAN-family model file through `spandrel`.

An `Upscaler` is built once per run (a model file is read once, however many videos it enlarges).
"""

from pathlib import Path

import numpy as np
import torch

from magicme.vcd.resize import resize_video


class Upscaler:
    def __init__(self, upscaler: str, device: str | torch.device = "cpu"):
        self.device = device
        self.model = None
        if upscaler != "lanczos":
            import spandrel

            self.model = spandrel.ModelLoader().load_from_file(str(Path(upscaler))).to(device).eval()

    def __call__(self, video: np.ndarray, scale: int) -> np.ndarray:
        """×`scale`; a model's own factor is corrected to exactly ×`scale` with Lanczos."""
        h, w = video.shape[1:3]
        if self.model is not None:
            with torch.no_grad():
                video = np.stack([
                    self.model(torch.from_numpy(f).permute(2, 0, 1)[None].to(self.device)).clamp(0, 1)[0]
                    .permute(1, 2, 0).cpu().numpy() for f in video
                ])
        return resize_video(video, h * scale, w * scale, self.device)
