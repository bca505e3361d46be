"""A tiny ControlNet for the tiny UNet — as a diffusers folder and as a single file in the original ControlNet
layout — and small clips to drive it (configs/tiny/sample_control*.yaml).

`ControlNetModel.from_unet` copies the UNet's encoder and starts its output ("zero") convolutions at 0, so a fresh
ControlNet adds exactly nothing; the bundle's one gets random weights there, so that its control visibly changes a
video, which is all random weights can show (docs/control.md).

The single file: diffusers reads the original layout (`ControlNetModel.from_single_file`, its
`convert_controlnet_checkpoint`) but has no writer, so `controlnet_to_original` inverts that reader rule by rule:
the UNet-encoder part as magicme/tiny/ldm.py writes a UNet, the ControlNet's own parts as the reader maps them back:

    controlnet_down_blocks.3           → control_model.zero_convs.3.0
    controlnet_mid_block               → control_model.middle_block_out.0
    controlnet_cond_embedding.blocks.2 → control_model.input_hint_block.6   (conv_in 0, blocks 2, 4, …, conv_out 14)

tests/test_control_preprocessors.py checks that the file loads to the folder's weights exactly.
"""

import re
from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from PIL import Image
from safetensors.torch import save_file

from magicme.tiny.ldm import unet_key_to_ldm, unet_layers_per_block
from magicme.tiny.preprocessors import save_tiny_depth, save_tiny_vitpose
from magicme.video_io import atomic_path

ORIGINAL_PREFIX = "control_model."

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


def controlnet_key_to_original(key: str, layers: int) -> str:
    """One diffusers ControlNetModel key in the original layout (without the `control_model.` prefix)."""
    own = DIFFUSERS_TO_LDM_MAPPING["controlnet"]["layers"]  # conv_in, time embedding, hint conv_in / conv_out
    if key in own:
        return own[key]
    m = re.match(r"controlnet_down_blocks\.(\d+)\.(weight|bias)$", key)
    if m:
        return f"zero_convs.{m.group(1)}.0.{m.group(2)}"
    m = re.match(r"controlnet_mid_block\.(weight|bias)$", key)
    if m:
        return f"middle_block_out.0.{m.group(1)}"
    m = re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(weight|bias)$", key)
    if m:
        return f"input_hint_block.{2 * (int(m.group(1)) + 1)}.{m.group(2)}"
    return unet_key_to_ldm(key, layers, set())


def controlnet_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel state dict in the original (lllyasviel) layout."""
    layers = unet_layers_per_block(state)
    return {ORIGINAL_PREFIX + controlnet_key_to_original(k, layers): v.contiguous() for k, v in state.items()}


def save_original_controlnet(folder: Path, path: Path) -> Path:
    """The diffusers ControlNet in `folder` as one original-layout file (`.safetensors`, or a pickled state dict for
    `.pth`/`.ckpt` as the original releases)."""
    state = controlnet_to_original(ControlNetModel.from_pretrained(folder, local_files_only=True).state_dict())
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(state, str(tmp))
        else:
            with open(tmp, "wb") as handle:
                torch.save(state, handle)
    return path


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
    """The tiny ControlNet (perturbed; a folder and the same net as one original-layout file), the depth and pose
    preprocessors' models, and two 8-frame 64² clips: a control clip and an input clip to edit."""
    net = save_tiny_controlnet(out / "controlnet", out / "sd15" / "unet", seed=seed + 3)
    return {
        "controlnet": net,
        "controlnet_file": save_original_controlnet(net, out / "controlnet_original.safetensors"),
        "depth_model": save_tiny_depth(out / "control" / "depth", seed=seed + 4),
        "pose_model": save_tiny_vitpose(out / "control" / "pose", seed=seed + 5),
        "control_clip": save_gif(out / "clips" / "control_square.gif", moving_square(8, 64, seed)),
        "input_clip": save_gif(out / "clips" / "input_square.gif", moving_square(8, 64, seed + 1)[:, :, ::-1]),
    }
