"""Tiny random-weight SD-XL-family models in the real file layouts (magicme/families/sdxl.py reads them).

SD-XL's structure at a CPU's width: a diffusers SDXL folder (two CLIP text encoders, the second with a projection,
whose hidden states are concatenated for cross-attention; two tokenizers; a UNet with three levels, the first
without attention, and SD-XL's "text_time" added conditioning: the pooled text embedding of the second encoder plus
six sinusoid-embedded size/crop numbers), an AnimateDiff SDXL motion module in the original `.ckpt` key layout
(three levels, no mid-block module, 32 frames, as `mm_sdxl_v10_beta.ckpt`), and an A1111/ComfyUI SDXL embedding
(`.safetensors` with `clip_l` and `clip_g`).
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from magicme.embeddings import save_sdxl_embedding
from magicme.tiny.ldm import save_sdxl_ldm_checkpoint
from magicme.tiny.motion import save_original_motion_module
from magicme.tiny.sd import animatediff_ddim, save_tiny_tokenizer, tiny_vae

TEXT_WIDTHS = (32, 48)  # SD-XL: 768 (CLIP ViT-L) and 1280 (OpenCLIP ViT-bigG)
UNET_CHANNELS = (32, 64, 64)  # SD-XL: 320, 640, 1280
TIME_EMBED = 8  # SD-XL: addition_time_embed_dim 256
SDXL_VAE_SCALING = 0.13025  # SD-XL's VAE scaling factor (SD1.5: 0.18215)


def tiny_sdxl_text_encoder(tokenizer: CLIPTokenizer, width: int, projection: bool) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=width, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def tiny_sdxl_unet() -> UNet2DConditionModel:
    """SD-XL's UNet layout: no attention at the first level, linear projections, cross-attention over both
    encoders' hidden states, and the text_time added embedding (pooled text + 6 micro-conditioning numbers)."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=UNET_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4), use_linear_projection=True, cross_attention_dim=sum(TEXT_WIDTHS),
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=TEXT_WIDTHS[1] + 6 * TIME_EMBED, norm_num_groups=32,
    )


def tiny_sdxl_motion_adapter() -> MotionAdapter:
    """The SDXL motion module's shape: a module per level of the SDXL UNet, none in the mid block, 32 frames."""
    return MotionAdapter(
        block_out_channels=UNET_CHANNELS, motion_layers_per_block=2, motion_num_attention_heads=8,
        motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=False,
    )


def save_tiny_sdxl(out: Path) -> Path:
    """Write a diffusers-layout SD-XL folder (the layout of `stable-diffusion-xl-base-1.0`)."""
    tokenizers = [save_tiny_tokenizer(out / name) for name in ("tokenizer", "tokenizer_2")]
    tiny_sdxl_text_encoder(tokenizers[0], TEXT_WIDTHS[0], projection=False).save_pretrained(out / "text_encoder")
    tiny_sdxl_text_encoder(tokenizers[1], TEXT_WIDTHS[1], projection=True).save_pretrained(out / "text_encoder_2")
    tiny_sdxl_unet().save_pretrained(out / "unet")
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=SDXL_VAE_SCALING)
    vae.save_pretrained(out / "vae")
    animatediff_ddim().save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
        "force_zeros_for_empty_prompt": True, "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def save_tiny_sdxl_single_file(folder: Path, path: Path) -> Path:
    """The tiny SD-XL folder's weights as one single-file checkpoint in `sd_xl_base_1.0.safetensors`'s layout."""
    return save_sdxl_ldm_checkpoint(UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
                                    AutoencoderKL.from_pretrained(folder, subfolder="vae"),
                                    CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"),
                                    CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2"),
                                    path)


def save_sdxl_models(out: Path, seed: int = 0) -> dict[str, Path]:
    """The SD-XL part of the tiny bundle: base folder, original-layout motion module, a two-encoder identity."""
    torch.manual_seed(seed + 3)
    paths = {"sdxl": save_tiny_sdxl(out / "sdxl")}
    paths["motion_sdxl"] = save_original_motion_module(tiny_sdxl_motion_adapter(),
                                                       out / "motion_module" / "mm_sdxl_tiny_beta.ckpt")
    generator = torch.Generator().manual_seed(seed + 4)
    clip_l, clip_g = (torch.randn(4, width, generator=generator) * 0.02 for width in TEXT_WIDTHS)
    paths["embedding_sdxl"] = save_sdxl_embedding(out / "embeddings_sdxl" / "tinyperson.safetensors", clip_l, clip_g,
                                                  class_word="man")
    return paths
