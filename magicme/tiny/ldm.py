"""Write an SD1.5-family or SD-XL model in the single-file *LDM* layout of community checkpoints (Realistic Vision,
SD-XL fine-tunes & co.).

Fixture building only: diffusers reads this layout (`from_single_file`) but has no writer, so this renamer inverts
its reader (`diffusers.loaders.single_file_utils.convert_ldm_{unet,vae,clip}_checkpoint`) rule by rule. The UNet's
shape (levels, layers per block, which blocks have attention) is read from the diffusers keys, so any channel count
or depth works; tests/test_ldm_layout.py proves the round trip exact.

    UNet  down_blocks.1.resnets.0.norm1  → model.diffusion_model.input_blocks.4.0.in_layers.0
    VAE   decoder.up_blocks.0.resnets.2  → first_stage_model.decoder.up.3.block.2
    CLIP  embeddings.token_embedding     → cond_stage_model.transformer.text_model.embeddings.token_embedding

SD-XL (`save_sdxl_ldm_checkpoint`): the same UNet and VAE names (the text_time embedding as `label_emb`), its first
text encoder under `conditioner.embedders.0.transformer.`, its second in OpenCLIP's layout under
`conditioner.embedders.1.model.` (q/k/v fused into `in_proj`, `text_projection` transposed), inverting
`convert_open_clip_checkpoint`.
"""

import re
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file

from magicme.video_io import atomic_path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
_UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
_OPENCLIP_LAYER = (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                   ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))


def _rename_head(tail: str, renames) -> str:
    """Rename the first component(s) of `tail` (e.g. `norm1.weight` → `in_layers.0.weight`)."""
    for new, old in renames:
        if tail.startswith(new + "."):
            return old + tail[len(new):]
    return tail


def unet_layers_per_block(keys) -> int:
    """Resnets per down block: the number LDM uses to number its flat `input_blocks`."""
    return len({k.split(".")[3] for k in keys if k.startswith("down_blocks.0.resnets.")})


def unet_key_to_ldm(key: str, layers: int, attention_up_blocks: set[int]) -> str:
    """One diffusers `UNet2DConditionModel` key in LDM naming (without the `model.diffusion_model.` prefix)."""
    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if key in top:
        return top[key]
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        kind, block, part, j, tail = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "down":
            if part == "downsamplers":  # `downsamplers.0.conv.weight` → `input_blocks.N.0.op.weight`
                return f"input_blocks.{(block + 1) * (layers + 1)}.0.op.{tail.removeprefix('conv.')}"
            index = 1 + block * (layers + 1) + j
        else:
            if part == "upsamplers":  # after the resnet (and the attention, if the block has one)
                slot = 2 if block in attention_up_blocks else 1
                return f"output_blocks.{block * (layers + 1) + layers}.{slot}.{tail}"
            index = block * (layers + 1) + j
        blocks = "input_blocks" if kind == "down" else "output_blocks"
        if part == "resnets":
            return f"{blocks}.{index}.0.{_rename_head(tail, _UNET_RESNET)}"
        return f"{blocks}.{index}.1.{tail}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        part, j, tail = m.group(1), int(m.group(2)), m.group(3)
        if part == "resnets":
            return f"middle_block.{2 * j}.{_rename_head(tail, _UNET_RESNET)}"
        return f"middle_block.1.{tail}"
    raise ValueError(f"no LDM name for UNet key {key!r}")


def unet_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM keys; SD-XL's added text_time embedding becomes `label_emb`."""
    extra = DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]
    added = {UNET_PREFIX + extra[k]: state[k] for k in extra if k in state}
    state = {k: v for k, v in state.items() if k not in extra}
    return {**unet_blocks_to_ldm(state), **added}


def unet_blocks_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    layers = unet_layers_per_block(state)
    attention_up = {int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k}
    return {UNET_PREFIX + unet_key_to_ldm(k, layers, attention_up): v for k, v in state.items()}


def vae_key_to_ldm(key: str, up_blocks: int) -> str:
    """One diffusers `AutoencoderKL` key in LDM naming (decoder levels are numbered in reverse in LDM)."""
    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in top:
        return top[key]
    m = re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        side, kind, block, part, j, tail = m.groups()
        level = int(block) if kind == "down" else up_blocks - 1 - int(block)
        if part == "resnets":
            return f"{side}.{kind}.{level}.block.{j}.{_rename_head(tail, (('conv_shortcut', 'nin_shortcut'),))}"
        return f"{side}.{kind}.{level}.{'downsample' if kind == 'down' else 'upsample'}.{tail}"
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        side, part, j, tail = m.groups()
        if part == "resnets":
            return f"{side}.mid.block_{int(j) + 1}.{_rename_head(tail, (('conv_shortcut', 'nin_shortcut'),))}"
        return f"{side}.mid.attn_1.{_rename_head(tail, _VAE_ATTENTION)}"
    raise ValueError(f"no LDM name for VAE key {key!r}")


def vae_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM keys; the mid-block attention projections become 1×1 convolutions, as in the original files."""
    up_blocks = len({k.split(".")[2] for k in state if k.startswith("decoder.up_blocks.")})
    out = {}
    for key, value in state.items():
        new = vae_key_to_ldm(key, up_blocks)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[VAE_PREFIX + new] = value
    return out


def text_encoder_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `CLIPTextModel` keys (with or without the older `text_model.` wrapper) under LDM's prefix."""
    return {TEXT_PREFIX + k.removeprefix("text_model."): v for k, v in state.items()
            if not k.endswith("position_ids")}


def openclip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `CLIPTextModelWithProjection` keys in OpenCLIP's layout, as SD-XL files keep their second
    encoder: per layer q/k/v concatenated into `attn.in_proj_*`, other names as OpenCLIP's, `text_projection` as
    the (width, projection) matrix OpenCLIP multiplies by (the transpose of the Linear's weight)."""
    top = DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"]
    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value.T.contiguous() if key == "text_projection.weight" else value
            continue
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m is None:
            if not key.endswith("position_ids"):
                raise ValueError(f"no OpenCLIP name for text encoder key {key!r}")
            continue
        layer, name, kind = m.groups()
        if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            if name == "self_attn.q_proj":
                parts = [state[f"text_model.encoder.layers.{layer}.self_attn.{x}_proj.{kind}"] for x in "qkv"]
                out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(parts)
            continue
        out[f"transformer.resblocks.{layer}.{_rename_head(name + '.' + kind, _OPENCLIP_LAYER)}"] = value
    return {SDXL_OPENCLIP_PREFIX + k: v for k, v in out.items()}


def save_sdxl_ldm_checkpoint(unet, vae, text_encoder, text_encoder_2, path: Path | str) -> Path:
    """Write SD-XL's diffusers/transformers modules as one single-file checkpoint in the layout of
    `sd_xl_base_1.0.safetensors` (safetensors only, as SD-XL files are distributed)."""
    unet, vae, clip_l, clip_g = (m if isinstance(m, dict) else m.state_dict()
                                 for m in (unet, vae, text_encoder, text_encoder_2))
    state = {**unet_to_ldm(unet), **vae_to_ldm(vae), **openclip_to_ldm(clip_g),
             **{SDXL_TEXT_PREFIX + k.removeprefix("text_model."): v for k, v in clip_l.items()
                if not k.endswith("position_ids")}}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    return path


def ldm_state_dict(unet: dict[str, torch.Tensor], vae: dict[str, torch.Tensor],
                   text_encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The three components' state dicts merged into one LDM-layout state dict."""
    return {**unet_to_ldm(unet), **vae_to_ldm(vae), **text_encoder_to_ldm(text_encoder)}


def save_ldm_checkpoint(unet, vae, text_encoder, path: Path | str, dtype: torch.dtype | None = None) -> Path:
    """Write diffusers/transformers modules (or their state dicts) as one LDM single-file checkpoint
    (`.safetensors`, or a `{"state_dict": ...}` pickle for `.ckpt`, as the original LDM code saved them)."""
    parts = [m if isinstance(m, dict) else m.state_dict() for m in (unet, vae, text_encoder)]
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in ldm_state_dict(*parts).items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(state, str(tmp))
        else:
            with open(tmp, "wb") as handle:  # a file object keeps the archive's inner name fixed (see save_torch)
                torch.save({"state_dict": state}, handle)
    return path
