"""A tiny ControlNet for the tiny UNet, and small clips to drive it (configs/tiny/sample_control*.yaml).

`ControlNetModel.from_unet` copies the UNet's encoder and starts its output ("zero") convolutions at 0, so a fresh
ControlNet adds exactly nothing; the bundle's one gets random weights there, so that its control visibly changes a
video, which is all random weights can show (docs/control.md).
"""

from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from PIL import Image

CONDITIONING_CHANNELS = (16, 16, 16, 16)  # 3 stride-2 convolutions: control frames at 1/8, the latents' size


def tiny_controlnet(unet: UNet2DConditionModel, perturb: bool, seed: int = 0) -> ControlNetModel:
    """`ControlNetModel.from_unet(unet)`; with `perturb`, its zero convolutions drawn from N(0, 0.1²) (seeded)."""
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS)
    if perturb:
        generator = torch.Generator().manual_seed(seed)
        zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
        with torch.no_grad():
            for conv in zero_convs:
                for p in conv.parameters():
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return net


def save_tiny_controlnet(out: Path, unet_folder: Path, seed: int = 0, perturb: bool = True) -> Path:
    """A diffusers ControlNet folder at `out` for the UNet saved in `unet_folder`."""
    tiny_controlnet(UNet2DConditionModel.from_pretrained(unet_folder), perturb, seed).save_pretrained(out)
    return out


def moving_square(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """(frames, size, size, 3) float32: a bright square on a dark ground, moving right a step per frame, with a
    seeded noise texture (something for canny to find and a ControlNet to follow)."""
    rng = np.random.default_rng(seed)
    video = np.full((frames, size, size, 3), 0.1, dtype=np.float32)
    side = size // 3
    for f in range(frames):
        left = (f * size // (2 * frames)) % (size - side)
        video[f, side:2 * side, left:left + side] = 0.9
    return np.clip(video + rng.normal(0, 0.02, video.shape).astype(np.float32), 0, 1)


def save_gif(path: Path, video: np.ndarray, fps: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.fromarray(np.round(f * 255).astype(np.uint8)) for f in video]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return path


def save_control_models(out: Path, seed: int = 0) -> dict[str, Path]:
    """The tiny ControlNet (perturbed) and two 8-frame 64² clips: a control clip and an input clip to edit."""
    return {
        "controlnet": save_tiny_controlnet(out / "controlnet", out / "sd15" / "unet", seed=seed + 3),
        "control_clip": save_gif(out / "clips" / "control_square.gif", moving_square(8, 64, seed)),
        "input_clip": save_gif(out / "clips" / "input_square.gif", moving_square(8, 64, seed + 1)[:, :, ::-1]),
    }
