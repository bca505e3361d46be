"""Write an SD1.5 UNet LoRA in the key format of AnimateLCM's `AnimateLCM_sd15_t2v_lora.safetensors`.

That file comes from the LCM-LoRA training recipe (diffusers' consistency-distillation example, which AnimateLCM
builds on): peft LoRA weights renamed to kohya's convention over diffusers module names —
`lora_unet_<module path, dots as underscores>.lora_down.weight` / `.lora_up.weight` plus a scalar `.alpha` per
module — on the attention projections, `proj_in`/`proj_out`, the feed-forwards, the resnets' convolutions and time
projections and the down/up samplers (AnimateLCM's own converter, `convert_lcm_lora`, reads exactly these names).
The loader reads it with diffusers' own LoRA loading, so the fixture only has to have the real names and shapes.
"""

from pathlib import Path

import torch
from torch import nn

from magicme.checkpoint_io import save_tensors, save_torch

# Module name endings the LCM-LoRA recipe puts LoRA layers on (SD1.5 UNet).
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
           "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def lora_pair(module: nn.Module, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) for a Linear or Conv2d as peft builds them: down has the layer's kernel, up is 1×1."""
    if isinstance(module, nn.Conv2d):
        down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=generator)
        up = torch.randn(module.out_channels, rank, 1, 1, generator=generator)
    else:
        down = torch.randn(rank, module.in_features, generator=generator)
        up = torch.randn(module.out_features, rank, generator=generator)
    return down * 0.1, up * 0.1


def save_kohya_unet_lora(unet: nn.Module, path: Path | str, rank: int = 8, alpha: float = 1.0,
                         seed: int = 0) -> Path:
    """A random LoRA on every targeted Linear/Conv2d of `unet` (a UNet2DConditionModel), in the AnimateLCM format."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and name.endswith(TARGETS):
            key = "lora_unet_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = lora_pair(module, rank, generator)
            state[f"{key}.alpha"] = torch.tensor(float(alpha))
    return save_tensors(state, path)


def save_animatediff_adapter_lora(unet: nn.Module, path: Path | str, rank: int = 4, seed: int = 0) -> Path:
    """A random LoRA in the layout of AnimateDiff v3's domain adapter (`v3_sd15_adapter.ckpt`), as the original
    code's `load_diffusers_lora` reads it: bare UNet module names, `<attention>.processor.<proj>_lora.{down,up}
    .weight` on the spatial attentions' q/k/v/out projections of `unet` (a UNet2DConditionModel)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        parent, _, proj = name.rpartition(".")
        if proj == "0" and parent.endswith(".to_out"):
            parent, proj = parent.removesuffix(".to_out"), "to_out"
        if isinstance(module, nn.Linear) and proj in ("to_q", "to_k", "to_v", "to_out") and ".attn" in parent:
            down, up = lora_pair(module, rank, generator)
            state[f"{parent}.processor.{proj}_lora.down.weight"], state[f"{parent}.processor.{proj}_lora.up.weight"] \
                = down, up
    return save_torch(state, path)
