"""Write motion modules and MotionLoRAs as the released files have them, from a diffusers `MotionAdapter`: the
*original* AnimateDiff layout (`mm_sd_v15_v2.ckpt`, `v2_lora_ZoomIn.ckpt`, AnimateDiff-Lightning's `_comfyui` files,
AnimateLCM's `.ckpt` without positional tensors) and the *diffusers* layout of Lightning's `_diffusers` files (the
adapter's own state dict).

The original layout is the inverse of diffusers' `convert_animatediff_checkpoint_to_diffusers`, used only to build
fixtures; the loaders then read these files through the same code path as real downloads.
"""

from pathlib import Path

import torch
from diffusers import MotionAdapter

from magicme.checkpoint_io import save_tensors, save_torch
from magicme.inspector import original_motion_key


def original_state_dict(adapter: MotionAdapter, positional: bool = True) -> dict[str, torch.Tensor]:
    """The adapter's weights under original keys; each attention block gets its own `pos_encoder.pe` buffer, as in
    the original (diffusers keeps one per transformer block). `positional=False` leaves the sinusoid tables out,
    as AnimateLCM's files do."""
    state = {}
    for key, value in adapter.state_dict().items():
        if key.endswith("pos_embed.pe"):
            prefix = original_motion_key(key).removesuffix(".pos_embed.pe")
            for k in (0, 1) if positional else ():
                state[f"{prefix}.attention_blocks.{k}.pos_encoder.pe"] = value.clone()
        else:
            state[original_motion_key(key)] = value.clone()
    return state


def save_original_motion_module(adapter: MotionAdapter, path: Path | str, positional: bool = True) -> Path:
    """Original layout; `.safetensors` (as Lightning's `_comfyui` files) or a torch file (`.ckpt`) by suffix."""
    return save_tensors(original_state_dict(adapter, positional), path)


def save_diffusers_motion_module(adapter: MotionAdapter, path: Path | str) -> Path:
    """The adapter's own state dict in one `.safetensors` file, as AnimateDiff-Lightning's `_diffusers` files."""
    return save_tensors({k: v.clone() for k, v in adapter.state_dict().items()}, path)


def save_original_motion_lora(adapter: MotionAdapter, path: Path | str, rank: int = 4, seed: int = 0) -> Path:
    """A random MotionLoRA in the original format: `<attention block>.processor.<proj>_lora.{down,up}.weight`."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, weight in adapter.state_dict().items():
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            if key.endswith(f".{proj}.weight") and (".attn1." in key or ".attn2." in key):
                prefix = original_motion_key(key).removesuffix(f".{proj}.weight")
                name = proj.removesuffix(".0")
                out_dim, in_dim = weight.shape
                state[f"{prefix}.processor.{name}_lora.down.weight"] = torch.randn(rank, in_dim, generator=generator)
                state[f"{prefix}.processor.{name}_lora.up.weight"] = torch.randn(out_dim, rank, generator=generator) * 0.1
    return save_torch(state, path)
