"""SD-XL identity training (`model.family: sdxl`): what differs from SD1.5, composed into the same loop.

N vectors per text encoder, held as one (N, D1 + D2) parameter (`tokens.SDXLIdentity`); the conditioning of
diffusers' SD-XL `encode_prompt` (each encoder's penultimate hidden states, concatenated; the second encoder's
projected pooled output as `text_embeds`); SD-XL's micro-conditioning (`time_ids`) from what the augmentation did to
each photo (`augment.micro_conditioning`); the stock SD-XL VAE encoding in float32 under fp16 (it overflows in
half precision; the fp16-fix VAE does not, and says so with `force_upcast: false`); the A1111/ComfyUI SDXL
embedding file (`clip_l`, `clip_g`) as output.
"""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from magicme.embeddings import save_sdxl_embedding

NATIVE_RESOLUTION = 1024  # SD-XL base's training size: the default `resolution`
MIN_RESOLUTION_SHARE = 0.75  # 768 for SD-XL base: below, its images fall apart


class SDXLTextEncoders(nn.Module):
    """Both text encoders as one module (one `accelerator.prepare`, one DDP wrapper): ids (B, 2, L), one row per
    tokenizer → (hidden states (B, L, D1 + D2), pooled text embedding (B, D2))."""

    def __init__(self, text_encoder: nn.Module, text_encoder_2: nn.Module):
        super().__init__()
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.text_encoder(input_ids[:, 0], output_hidden_states=True)
        second = self.text_encoder_2(input_ids[:, 1], output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return hidden, second.text_embeds


def sdxl_unet_inputs(text_encoders: nn.Module, input_ids: torch.Tensor, time_ids: torch.Tensor,
                     dtype: torch.dtype) -> dict:
    """The SD-XL UNet's conditioning keywords for one batch."""
    hidden, pooled = text_encoders(input_ids)
    return {"encoder_hidden_states": hidden.to(dtype),
            "added_cond_kwargs": {"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(hidden.device, dtype)}}


def sdxl_caption_ids(encoders: list[Callable]) -> Callable[[list[str]], torch.Tensor]:
    """`captions → (B, 2, L)`: each tokenizer's ids (`encoders`: `data.caption_ids` of each tokenizer)."""
    return lambda captions: torch.stack([encode(captions) for encode in encoders], dim=1)


def vae_dtype(dtype: torch.dtype, force_upcast: bool) -> torch.dtype:
    """The dtype SD-XL's VAE encodes in: float32 under fp16 when its config says it overflows in half precision
    (`force_upcast`, as diffusers' SD-XL pipelines read it), else the training dtype."""
    return torch.float32 if dtype == torch.float16 and force_upcast else dtype


def default_resolution(unet_config: dict, vae_config: dict) -> int:
    """The base's native image size: the UNet's latent `sample_size` × the VAE's downsampling (1024 for SD-XL base);
    SD-XL's 1024 when the configs are not on disk (a Hub id)."""
    if "sample_size" not in unet_config:
        return NATIVE_RESOLUTION
    return int(unet_config["sample_size"]) * 2 ** (len(vae_config.get("block_out_channels", (0,) * 4)) - 1)


def save_sdxl_vectors(path: Path, vectors: torch.Tensor, width: int, class_word: str | None) -> Path:
    """The joint (N, D1 + D2) vectors as the SDXL embedding file: `clip_l` the first `width` columns, `clip_g` the
    rest."""
    return save_sdxl_embedding(path, vectors[:, :width], vectors[:, width:], class_word=class_word)
