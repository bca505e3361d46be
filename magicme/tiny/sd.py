"""Tiny random-weight Stable Diffusion 1.5-family models, saved in the real file formats.

No weights can be downloaded where the tests run, so the project builds its own: a diffusers SD folder (unet, vae,
text_encoder, tokenizer, scheduler), motion modules in the *original AnimateDiff* key layout, an original-format
MotionLoRA and an A1111/ComfyUI embedding `.pt`. Every loader is then exercised on exactly the formats real
downloads have. Shapes follow SD1.5's structure (4-level VAE with ×8 downsampling, cross-attention UNet, CLIP text
encoder) at a width small enough for a CPU.
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from magicme.tiny.lora import save_animatediff_adapter_lora, save_kohya_unet_lora
from magicme.tiny.motion import save_diffusers_motion_module, save_original_motion_module

TEXT_WIDTH = 32
UNET_CHANNELS = (32, 64)
MOTION_VERSIONS = {"v1": (24, False), "v2": (32, True), "v3": (32, False)}  # (max frames, mid-block module)


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges that join each of `words` left to right into one token (`r e`, `re d</w>` for "red")."""
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        joined = pieces[0]
        for piece in pieces[1:]:
            if (joined, piece) not in merges:
                merges.append((joined, piece))
            joined += piece
    return merges


def save_tiny_tokenizer(out: Path, words: list[str] | tuple[str, ...] = ()) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with a byte-level character vocabulary: every word is split into characters, which is
    enough to test prompt handling and added ID tokens; each of `words` (the miniature world's vocabulary) is
    merged into a token of its own."""
    out.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    merges = word_merges(list(words))
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab += [a + b for a, b in merges if a + b not in vocab]
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special})
    )
    tokenizer = CLIPTokenizer.from_pretrained(out)
    return tokenizer


def tiny_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def tiny_unet() -> UNet2DConditionModel:
    """SD1.5's UNet layout (cross-attention blocks, 2 resnets per block, 8 heads) with 2 levels of 32/64 channels."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=UNET_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32,
    )


def tiny_vae() -> AutoencoderKL:
    """4 levels like SD's VAE, so images are downsampled ×8 exactly as with real weights."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=32, sample_size=64,
    )


def animatediff_ddim() -> DDIMScheduler:
    """DDIM exactly as AnimateDiff configures it: linear betas 0.00085→0.012, steps_offset 1, no clipping."""
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1, clip_sample=False,
        set_alpha_to_one=False, timestep_spacing="leading",
    )


def tiny_motion_adapter(version: str) -> MotionAdapter:
    max_len, mid = MOTION_VERSIONS[version]
    return MotionAdapter(
        block_out_channels=UNET_CHANNELS, motion_layers_per_block=2, motion_num_attention_heads=8,
        motion_norm_num_groups=32, motion_max_seq_length=max_len, use_motion_mid_block=mid,
    )


def save_tiny_sd(out: Path) -> Path:
    """Write a diffusers-layout SD folder (the layout of `stable-diffusion-v1-5`)."""
    tokenizer = save_tiny_tokenizer(out / "tokenizer")
    return save_sd_folder(out, tiny_text_encoder(tokenizer), tiny_unet(), tiny_vae())


def save_sd_folder(out: Path, text_encoder: CLIPTextModel, unet: UNet2DConditionModel, vae: AutoencoderKL) -> Path:
    """The components (the tokenizer already in `out/tokenizer`) and AnimateDiff's DDIM as a diffusers SD folder;
    the tiny bundle and the miniature world's trained models are written alike."""
    text_encoder.save_pretrained(out / "text_encoder")
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    animatediff_ddim().save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def save_fewstep_models(out: Path, seed: int = 0) -> dict[str, Path]:
    """The few-step files (docs/fewstep.md) in their released formats: an AnimateDiff-Lightning-style module in its
    diffusers layout and the same weights in its ComfyUI (original) layout, and an AnimateLCM-style module (original
    layout, no positional tensors) with its SD1.5 UNet LoRA. Random weights, like the rest of the bundle."""
    torch.manual_seed(seed + 2)
    lightning = tiny_motion_adapter("v2")  # Lightning's modules have the v2 shape (mid block, 32 frames)
    folder = out / "motion_module"
    return {
        "motion_lightning": save_diffusers_motion_module(
            lightning, folder / "animatediff_lightning_tiny_diffusers.safetensors"),
        "motion_lightning_comfyui": save_original_motion_module(
            lightning, folder / "animatediff_lightning_tiny_comfyui.safetensors"),
        "motion_animatelcm": save_original_motion_module(
            tiny_motion_adapter("v2"), folder / "AnimateLCM_tiny_t2v.ckpt", positional=False),
        "lora_animatelcm": save_kohya_unet_lora(tiny_unet(), out / "lora" / "AnimateLCM_tiny_t2v_lora.safetensors",
                                                seed=seed),
        "lora_v3_adapter": save_animatediff_adapter_lora(tiny_unet(), out / "lora" / "v3_sd15_adapter_tiny.ckpt",
                                                         seed=seed),
    }
