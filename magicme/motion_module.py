"""AnimateDiff motion modules and MotionLoRAs in their original file formats.

Original files (`mm_sd_v15.ckpt`, `mm_sd_v15_v2.ckpt`, `v3_sd15_mm.ckpt`) carry no config, so the version and
shape are read from the keys, as AnimateDiff-Evolved does: a `mid_block` module means v2; otherwise a positional
encoding of 32 frames means v3 and of 24 frames v1. The weights then go through diffusers' own key converter into a
`MotionAdapter` built with the inferred shape, so full-size and tiny files take the same path.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import MotionAdapter, UNetMotionModel
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from magicme.checkpoint_io import load_checkpoint
from magicme.errors import ConfigError

ATTENTION_HEADS = 8  # fixed in the original AnimateDiff code for every version
NORM_GROUPS = 32


@dataclass(frozen=True)
class MotionModuleInfo:
    version: str  # "v1" | "v2" | "v3"
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    mid_block: bool
    max_seq_length: int


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors`, `.ckpt`, `.pt` or `.pth` file, read safely (`weights_only=True`)."""
    state = load_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: not a state dict of tensors")
    return state


def inspect_motion_module(state: dict[str, torch.Tensor], path: Path | str = "motion module") -> MotionModuleInfo:
    """Version and shape of an original-layout motion module, from its keys alone."""
    keys = [k for k in state if ".motion_modules." in k and ".temporal_transformer." in k and "_lora." not in k]
    if not keys:
        hint = (
            "it looks like a MotionLoRA: list it under model.motion_loras"
            if any("_lora." in k for k in state)
            else "expected keys like 'down_blocks.0.motion_modules.0.temporal_transformer...'"
        )
        raise ConfigError(f"{path}: not an AnimateDiff motion module; {hint}")
    down = sorted({int(k.split(".")[1]) for k in keys if k.startswith("down_blocks.")})
    if max(down, default=0) == 2:  # SD1.5 has 4 down blocks (0-3), SDXL 3
        raise ConfigError(f"{path}: this is an SDXL motion module; magicme runs SD1.5-family models")
    norms = [state.get(f"down_blocks.{i}.motion_modules.0.temporal_transformer.norm.weight") for i in down]
    if not down or any(n is None for n in norms):
        raise ConfigError(f"{path}: incomplete motion module (no input norm weights in its down blocks)")
    channels = tuple(n.shape[0] for n in norms)
    layers = len({k.split(".")[3] for k in keys if k.startswith("down_blocks.0.")})
    pe = [v for k, v in state.items() if k.endswith("pos_encoder.pe")]
    if not pe:
        raise ConfigError(f"{path}: motion module has no positional encoding ('pos_encoder.pe'); unsupported variant")
    max_len = pe[0].shape[1]
    mid = any(k.startswith("mid_block.") for k in keys)
    version = "v2" if mid else ("v1" if max_len == 24 else "v3")
    return MotionModuleInfo(version, channels, layers, mid, max_len)


def load_motion_adapter(path: Path | str) -> tuple[MotionAdapter, MotionModuleInfo]:
    """A `MotionAdapter` from an original AnimateDiff file or a diffusers MotionAdapter folder."""
    path = Path(path)
    if path.is_dir():
        adapter = MotionAdapter.from_pretrained(path, local_files_only=True)
        cfg = adapter.config
        mid = bool(cfg.use_motion_mid_block)
        version = "v2" if mid else ("v1" if cfg.motion_max_seq_length == 24 else "v3")
        layers = cfg.motion_layers_per_block
        layers = layers if isinstance(layers, int) else layers[0]
        info = MotionModuleInfo(version, tuple(cfg.block_out_channels), layers, mid, cfg.motion_max_seq_length)
        return adapter, info
    state = read_state_dict(path)
    info = inspect_motion_module(state, path)
    adapter = MotionAdapter(
        block_out_channels=info.block_out_channels, motion_layers_per_block=info.layers_per_block,
        motion_num_attention_heads=ATTENTION_HEADS, motion_norm_num_groups=NORM_GROUPS,
        motion_max_seq_length=info.max_seq_length, use_motion_mid_block=info.mid_block,
    )
    converted = convert_animatediff_checkpoint_to_diffusers(state)
    missing, unexpected = adapter.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith("pos_embed.pe")]  # diffusers rebuilds the same sinusoids
    if missing or unexpected:
        raise ConfigError(
            f"{path}: motion module keys do not fit a {info.version} adapter "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); is this file complete?"
        )
    return adapter, info


def lora_targets(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """Map each UNetMotionModel weight a MotionLoRA changes to its (down, up) keys in the file.

    Original key `…attention_blocks.0.processor.to_q_lora.down.weight` targets the original weight
    `…attention_blocks.0.to_q.weight`, whose diffusers name comes from diffusers' own converter.
    """
    targets = {}
    for down_key in (k for k in state if k.endswith("_lora.down.weight")):
        weight_key = down_key.replace(".processor.", ".").replace("_lora.down.weight", ".weight")
        weight_key = weight_key.replace(".to_out.weight", ".to_out.0.weight")
        (diffusers_key,) = convert_animatediff_checkpoint_to_diffusers({weight_key: None})
        targets[diffusers_key] = (down_key, down_key.replace(".down.weight", ".up.weight"))
    return targets


def merge_motion_lora(unet: UNetMotionModel, path: Path | str, strength: float) -> int:
    """Add strength · (up @ down) to every targeted weight, as the original AnimateDiff does; returns the count."""
    state = read_state_dict(path)
    targets = lora_targets(state)
    if not targets:
        raise ConfigError(f"{path}: not a MotionLoRA (no '..._lora.down.weight' keys)")
    params = dict(unet.named_parameters())
    unknown = [k for k in targets if k not in params]
    if unknown:
        raise ConfigError(
            f"{path}: MotionLoRA does not fit the loaded motion module ({len(unknown)} weights missing, e.g. "
            f"{unknown[0]}); official MotionLoRAs need a v2 motion module"
        )
    with torch.no_grad():
        for key, (down_key, up_key) in targets.items():
            param = params[key]
            delta = state[up_key].float() @ state[down_key].float()
            param.add_((strength * delta).to(param.device, param.dtype))
    return len(targets)
