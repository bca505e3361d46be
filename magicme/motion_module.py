"""AnimateDiff motion modules (original and diffusers key layouts) and MotionLoRAs.

Motion module files (`mm_sd_v15_v2.ckpt`, `v3_sd15_mm.ckpt`, `AnimateLCM_sd15_t2v.ckpt`,
`animatediff_lightning_4step_{comfyui,diffusers}.safetensors`) carry no config, so the layout, version and shape are
read from the keys and shapes (`magicme.inspector.inspect_motion_module`, which also runs on file headers before
anything loads). The weights go through diffusers' own key converter (which renames original-layout keys and leaves
diffusers-layout ones as they are) into a `MotionAdapter` built with the inferred shape, so full-size and tiny files
take the same path.
"""

from pathlib import Path

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from magicme.checkpoint_io import load_checkpoint
from magicme.errors import ConfigError
from magicme.inspector import (FAMILY_LABELS, MotionModuleInfo, inspect_motion_module, lora_target_weights,
                               motion_info_from_config)

ATTENTION_HEADS = 8  # fixed in the original AnimateDiff code for every version
NORM_GROUPS = 32


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors`, `.ckpt`, `.pt` or `.pth` file, read safely (`weights_only=True`)."""
    state = load_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: not a state dict of tensors")
    return state


def check_family(info: MotionModuleInfo, path: Path | str, family: str) -> MotionModuleInfo:
    """An SDXL motion module for an SD1.5 base (or the reverse) is an error, before the adapter is built."""
    if info.family != family:
        raise ConfigError(f"model.motion_module: {path}: an {FAMILY_LABELS[info.family]} motion module, but "
                          f"model.family is {family}; use a motion module made for "
                          f"{FAMILY_LABELS.get(family, family)} bases")
    return info


def load_motion_adapter(path: Path | str, family: str = "sd15") -> tuple[MotionAdapter, MotionModuleInfo]:
    """A `MotionAdapter` from a motion module file in either key layout (original AnimateDiff / AnimateLCM /
    Lightning `_comfyui` / the SDXL beta's `.ckpt`, or a diffusers state dict such as Lightning's `_diffusers`
    files; told apart by keys), or from a diffusers MotionAdapter folder; it must fit `family`'s bases."""
    path = Path(path)
    if path.is_dir():
        adapter = MotionAdapter.from_pretrained(path, local_files_only=True)
        return adapter, check_family(motion_info_from_config(adapter.config, path), path, family)
    state = read_state_dict(path)
    info = check_family(inspect_motion_module(state, path), path, family)
    adapter = MotionAdapter(
        block_out_channels=info.block_out_channels, motion_layers_per_block=info.layers_per_block,
        motion_num_attention_heads=ATTENTION_HEADS, motion_norm_num_groups=NORM_GROUPS,
        motion_max_seq_length=info.max_seq_length, use_motion_mid_block=info.mid_block,
    )
    converted = convert_animatediff_checkpoint_to_diffusers(state)  # renames original keys; diffusers ones stay
    missing, unexpected = adapter.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith("pos_embed.pe")]  # diffusers rebuilds the same sinusoids
    if missing or unexpected:
        raise ConfigError(
            f"{path}: motion module keys do not fit a {info.version} adapter "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); is this file complete?"
        )
    return adapter, info


def motion_unet(unet2d: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """The base's 2D UNet with the motion module: diffusers' `UNetMotionModel.from_unet2d`, then every 2D weight
    loaded by name. `from_unet2d` copies the blocks, conv_in/out and the time embedding, but leaves SD-XL's
    `add_embedding` (the pooled-text + size/crop micro-conditioning) at its random initialisation (left for later
    in diffusers PR #6721); loading the whole 2D state dict makes every 2D weight the base's, whatever the family."""
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    unexpected = unet.load_state_dict(unet2d.state_dict(), strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"UNetMotionModel has no place for the 2D UNet's {unexpected[:3]}")
    return unet


def lora_targets(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """Map each UNetMotionModel weight a MotionLoRA changes to its (down, up) keys in the file: the original-layout
    targets (`magicme.inspector.lora_target_weights`) under their diffusers names, from diffusers' own converter."""
    targets = {}
    for weight_key, pair in lora_target_weights(state).items():
        (diffusers_key,) = convert_animatediff_checkpoint_to_diffusers({weight_key: None})
        targets[diffusers_key] = pair
    return targets


def merge_animatediff_lora(unet: torch.nn.Module, state: dict[str, torch.Tensor], strength: float) -> list[str]:
    """Add strength · (up @ down) to every weight a LoRA in AnimateDiff's own layout targets (its MotionLoRAs and
    the v3 domain adapter: `….processor.to_q_lora.down.weight`), as the original code's `load_diffusers_lora` does.
    Returns the targeted weights `unet` lacks; nothing is merged then."""
    targets = lora_targets(state)
    params = dict(unet.named_parameters())
    unknown = [k for k in targets if k not in params]
    if unknown:
        return unknown
    with torch.no_grad():
        for key, (down_key, up_key) in targets.items():
            param = params[key]
            delta = state[up_key].float() @ state[down_key].float()
            param.add_((strength * delta).to(param.device, param.dtype))
    return []


def merge_motion_lora(unet: UNetMotionModel, path: Path | str, strength: float) -> int:
    """Merge a MotionLoRA file into the motion module at `strength`; returns the number of weights changed."""
    state = read_state_dict(path)
    targets = lora_targets(state)
    if not targets:
        raise ConfigError(f"{path}: not a MotionLoRA (no '..._lora.down.weight' keys)")
    unknown = merge_animatediff_lora(unet, state, strength)
    if unknown:
        raise ConfigError(
            f"{path}: MotionLoRA does not fit the loaded motion module ({len(unknown)} weights missing, e.g. "
            f"{unknown[0]}); official MotionLoRAs need a v2 motion module"
        )
    return len(targets)
