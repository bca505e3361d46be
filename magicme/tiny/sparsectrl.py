"""Tiny SparseCtrl nets for the tiny UNet, and keyframe images to drive them (configs/tiny/sample_sparsectrl.yaml).

`SparseControlNetModel.from_unet` copies the UNet's encoder, adds temporal layers (32 positions, as the v3 motion
module) and starts its output ("zero") convolutions and, for an rgb net, its one-convolution condition embedding at 0,
so a fresh net adds exactly nothing. `from_unet` always makes the simplified (rgb) embedding; a scribble net is the
same net with the convolutional embedding of 3 pixel channels (diffusers' config switch), the rest of its weights
copied. The bundle's nets get random weights in their zero convolutions, so that their control visibly changes a
video, which is all random weights can show (docs/control.md).
"""

from pathlib import Path

import numpy as np
import torch
from diffusers import SparseControlNetModel, UNet2DConditionModel
from PIL import Image

from magicme.control.sparse import TYPES
from magicme.tiny.controlnet import CONDITIONING_CHANNELS, moving_square


def zero_convolutions(net: SparseControlNetModel) -> list[torch.nn.Module]:
    """The layers a fresh net starts at 0: its residual projections and the last layer of its condition embedding."""
    embedding = net.controlnet_cond_embedding
    last = embedding if isinstance(embedding, torch.nn.Conv2d) else embedding.conv_out
    return [*net.controlnet_down_blocks, net.controlnet_mid_block, last]


def tiny_sparsectrl(unet: UNet2DConditionModel, kind: str, perturb: bool, seed: int = 0) -> SparseControlNetModel:
    """An rgb or scribble SparseCtrl net from `unet` (loaded from a folder: `from_unet` edits its config's lists);
    with `perturb`, its zero convolutions drawn from N(0, 0.1²) (seeded)."""
    channels, simplified = TYPES[kind]
    net = SparseControlNetModel.from_unet(unet, conditioning_channels=channels,
                                          conditioning_embedding_out_channels=CONDITIONING_CHANNELS)
    if not simplified:
        rgb = net
        config = {k: v for k, v in rgb.config.items() if not k.startswith("_")}  # `_use_default_values` would win
        net = SparseControlNetModel.from_config({**config, "use_simplified_condition_embedding": False})
        own = {k: v for k, v in rgb.state_dict().items() if not k.startswith("controlnet_cond_embedding.")}
        net.load_state_dict(own, strict=False)  # the embedding stays as made: its conv_out at 0
    if perturb:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for conv in zero_convolutions(net):
                for p in conv.parameters():
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return net


def save_tiny_sparsectrl(out: Path, unet_folder: Path, kind: str, seed: int = 0, perturb: bool = True) -> Path:
    """A diffusers SparseControlNetModel folder at `out` for the UNet saved in `unet_folder`."""
    unet = UNet2DConditionModel.from_pretrained(unet_folder)
    tiny_sparsectrl(unet, kind, perturb, seed).save_pretrained(out)
    return out


def save_png(path: Path, image: np.ndarray) -> Path:
    """A [0, 1] (H, W, 3) image as an 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def save_sparsectrl_models(out: Path | str, seed: int = 0) -> dict[str, Path]:
    """The tiny rgb and scribble SparseCtrl nets (perturbed) for the bundle's SD1.5 UNet, and two 64² keyframes
    (the first and last frame of the moving square) for an 8-frame run."""
    out = Path(out)
    square = moving_square(8, 64, seed)
    return {
        "sparsectrl_rgb": save_tiny_sparsectrl(out / "sparsectrl_rgb", out / "sd15" / "unet", "rgb", seed + 4),
        "sparsectrl_scribble": save_tiny_sparsectrl(out / "sparsectrl_scribble", out / "sd15" / "unet", "scribble",
                                                    seed + 5),
        "keyframe_first": save_png(out / "keyframes" / "square_0.png", square[0]),
        "keyframe_last": save_png(out / "keyframes" / "square_7.png", square[7]),
    }
