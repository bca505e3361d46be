"""The SD-XL model family: SD-XL bases (stable-diffusion-xl-base-1.0 and fine-tunes) + the AnimateDiff SDXL motion
module (`mm_sdxl_v10_beta.ckpt`), with identities that have vectors for both SD-XL text encoders.

Composed from diffusers: the base's components (two tokenizers and CLIP text encoders, the second with projection),
`UNetMotionModel.from_unet2d` with the motion module read by magicme/motion_module.py, and
`AnimateDiffSDXLPipeline`, which encodes the prompt with both encoders and adds SD-XL's micro-conditioning (sizes,
crop). T2V starts from the 3D noise prior as for SD1.5 (magicme/pipeline.py). What is not here yet (video→video
stages, prompt weighting and travel, single-file bases, training) is listed in docs/sdxl.md; each is one clear error
before sampling starts.
"""

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AnimateDiffSDXLPipeline, AutoencoderKL, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from magicme.devices import resolve_device, resolve_dtype
from magicme.embeddings import load_into_sdxl_pipeline
from magicme.errors import ConfigError
from magicme.families.sd15 import load_vae, make_scheduler, scheduler_spec
from magicme.families.sd15 import check as check_schedulers
from magicme.inspector import is_hub_id
from magicme.motion_module import load_motion_adapter
from magicme.pipeline import MagicPipeline
from magicme.prompt_encoding import CHUNK_TOKENS
from magicme.prompt_weights import parse_weighted
from magicme.prompts import Prompt, to_pipeline_prompt, travels

NAME = "sdxl"
__all__ = ["NAME", "check", "load", "make_scheduler", "scheduler_spec", "SDXLMagicPipeline"]


@dataclass
class SDXLComponents:
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    vae: AutoencoderKL
    unet: UNet2DConditionModel


def check(model, schedulers: dict | None = None, schedules: list | None = None) -> None:
    """The settings this family does not have yet are errors now, before anything loads; then the schedulers, as
    for SD1.5 (the same presets and AnimateDiff's linear betas, which diffusers' AnimateDiff SDXL example uses)."""
    if model.get("loras"):
        raise ConfigError("model.loras: image LoRAs are not supported with model.family sdxl yet; remove them")
    if model.get("motion_loras"):
        raise ConfigError("model.motion_loras: the MotionLoRAs are made for SD1.5 v2 modules; remove them for "
                          "model.family sdxl")
    if model.get("animatediff_numerics", "original") != "diffusers":
        raise ConfigError("model.animatediff_numerics: 'original' is measured for the SD1.5 motion modules only; set "
                          "model.animatediff_numerics: diffusers for model.family sdxl")
    for _, _, _, why in schedules or []:
        if why != "steps":
            raise ConfigError(f"{why}: this stage denoises video→video, which model.family sdxl does not do yet "
                              f"(see docs/sdxl.md); remove the stage or set its strength to 0")
    check_schedulers(model, schedulers, schedules)


def load_base(base: str, dtype: torch.dtype, vae: AutoencoderKL | None = None) -> SDXLComponents:
    """SD-XL tokenizers, text encoders, VAE and 2D UNet from a diffusers folder (or a Hub id the user wrote)."""
    if Path(base).is_file():
        raise ConfigError(f"model.base: {base}: single-file SDXL bases are not supported yet; use the diffusers folder "
                          f"(e.g. stable-diffusion-xl-base-1.0)")
    local = not is_hub_id(base)
    kwargs = {"local_files_only": local, "torch_dtype": dtype}
    return SDXLComponents(
        tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", local_files_only=local),
        tokenizer_2=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2", local_files_only=local),
        text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **kwargs),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2", **kwargs),
        vae=vae if vae is not None else AutoencoderKL.from_pretrained(base, subfolder="vae", **kwargs),
        unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet", **kwargs),
    )


class SDXLMagicPipeline(MagicPipeline):
    """MagicPipeline on `AnimateDiffSDXLPipeline`: text→video from the 3D prior, prompts encoded by diffusers with
    both encoders (identity tokens expanded in each by its textual-inversion loader)."""

    def make_v2v(self, t2v: AnimateDiffSDXLPipeline) -> None:
        return None  # diffusers has no AnimateDiff SDXL video→video pipeline; `check` refuses such stages

    def decode_options(self) -> dict:
        return {}  # AnimateDiffSDXLPipeline decodes all frames at once (no decode_chunk_size)

    def video_to_video(self, *args, **kwargs):
        raise ConfigError("stages: video→video (face, tiled, edit) is not available for model.family sdxl yet; see "
                          "docs/sdxl.md")

    @contextlib.contextmanager
    def conditioned(self, prompt: Prompt, negative_prompt: Prompt, frames: int, pipeline_kwargs: dict):
        """The prompt strings with identity references rewritten to their tokens, for diffusers to encode with both
        encoders. Weighted, travelling and longer-than-75-token prompts need a two-encoder prompt encoder, which
        is not written yet: each is an error naming the prompt."""
        if pipeline_kwargs.get("prompt_embeds") is not None:
            yield {"prompt": prompt, "negative_prompt": negative_prompt or None}
            return
        for key, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if travels(text):
                raise ConfigError(f"prompts: prompt travel is not supported with model.family sdxl yet; give {key} as "
                                  f"one text")
            if any(weight != 1.0 for _, weight in parse_weighted(text, self.prompts.weighting)):
                raise ConfigError(f"prompts: the {key} {text[:40]!r}… has weights, which model.family sdxl does not "
                                  f"apply yet; remove them or set prompt_weighting: none")
            if self.prompts.tokenize(text).chunks > 1:
                raise ConfigError(f"prompts: the {key} {text[:40]!r}… is longer than {CHUNK_TOKENS} tokens, which "
                                  f"model.family sdxl does not encode yet; shorten it")
        yield {"prompt": to_pipeline_prompt(prompt), "negative_prompt": to_pipeline_prompt(negative_prompt) or None}


def load(model, embeddings: dict[str, Path] | None = None, device: str = "auto", precision: str = "auto",
         attention: str = "sdpa", vae_slicing: bool = False, cpu_offload: bool = False) -> SDXLMagicPipeline:
    """Build the T2V pipeline from a checked `model:` block, with the identities the prompts use registered as
    tokens `<name>` in both text encoders."""
    device_ = resolve_device(device)
    dtype = resolve_dtype(precision, device_)
    vae = load_vae(str(model.vae), model.get("base_config") or str(model.base), dtype) if model.get("vae") else None
    base = load_base(str(model.base), dtype, vae=vae)
    adapter, info = load_motion_adapter(model.motion_module, family=NAME)
    unet = UNetMotionModel.from_unet2d(base.unet, adapter)
    if unet.dtype != dtype:
        unet.to(dtype)
    pipe = AnimateDiffSDXLPipeline(
        vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2, tokenizer=base.tokenizer,
        tokenizer_2=base.tokenizer_2, unet=unet, motion_adapter=None, scheduler=make_scheduler(model.scheduler),
    )
    load_into_sdxl_pipeline(pipe, embeddings or {})
    if attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    if vae_slicing:
        pipe.vae.enable_slicing()
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device_)
    else:
        pipe.to(device_)
    return SDXLMagicPipeline(pipe, motion_version=info.version, max_frames=info.max_seq_length, family=NAME)
