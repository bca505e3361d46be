"""The SD-XL model family: SD-XL bases (stable-diffusion-xl-base-1.0 and fine-tunes) + the AnimateDiff SDXL motion
module (`mm_sdxl_v10_beta.ckpt`), with identities that have vectors for both SD-XL text encoders.

Composed from diffusers: the base's components (two tokenizers and CLIP text encoders, the second with projection),
`UNetMotionModel.from_unet2d` with the motion module read by magicme/motion_module.py, and
`AnimateDiffSDXLPipeline`, which encodes the prompt with both encoders and adds SD-XL's micro-conditioning (sizes,
crop). T2V starts from the 3D noise prior as for SD1.5 (magicme/pipeline.py); prompts are weighted and chunked as
for SD1.5, per encoder (`SDXLPromptEncoder`). What is not here yet (video→video stages, prompt travel, single-file
bases, training) is listed in docs/sdxl.md; each is one clear error before sampling starts.
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
from magicme.pipeline import MagicPipeline, place
from magicme.prompt_encoding import CHUNK_TOKENS, PromptEncoder, TokenizedPrompt
from magicme.prompts import Prompt, keyframes, travels

NAME = "sdxl"
CONTROL = False  # SD-XL ControlNets are not wired yet (docs/control.md)
__all__ = ["NAME", "check", "load", "make_scheduler", "scheduler_spec", "SDXLMagicPipeline", "SDXLPromptEncoder"]


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


class SDXLPromptEncoder:
    """SD-XL conditioning as diffusers' `encode_prompt` computes it — each encoder's penultimate hidden states,
    concatenated, and the second encoder's projected pooled output — with SD1.5's weighting and 75-token chunks
    (magicme/prompt_encoding.py) applied per encoder, as ComfyUI's SDXL CLIP does. An unweighted prompt of at most
    75 tokens gives exactly diffusers' tensors; an empty negative prompt gives zeros, as diffusers does for SD-XL
    (`force_zeros_for_empty_prompt`)."""

    def __init__(self, pipeline, weighting: str = "comfy"):
        self.pipeline = pipeline
        pairs = ((pipeline.tokenizer, pipeline.text_encoder), (pipeline.tokenizer_2, pipeline.text_encoder_2))
        self.sides = [PromptEncoder(pipeline, weighting, tokenizer, encoder, hidden_layer=-2)
                      for tokenizer, encoder in pairs]

    @property
    def weighting(self) -> str:
        return self.sides[0].weighting

    @weighting.setter
    def weighting(self, value: str) -> None:
        for side in self.sides:
            side.weighting = value

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        """The first tokenizer's ids (SD-XL's two tokenizers share one vocabulary; identities have N tokens in each)."""
        return self.sides[0].tokenize(prompt)

    def count(self, prompt: str) -> int:
        return self.sides[0].count(prompt)

    def check_length(self, prompt: str, where: str) -> int:
        return self.sides[0].check_length(prompt, where)

    def encode(self, prompt: str, chunks: int | None = None) -> torch.Tensor:
        """(1, 77 · chunks, D1 + D2)."""
        chunks = chunks or max(side.tokenize(prompt).chunks for side in self.sides)
        return torch.cat([side.encode(prompt, chunks) for side in self.sides], dim=-1)

    @torch.no_grad()
    def pooled(self, prompt: str) -> torch.Tensor:
        """(1, D2): the second encoder's projected output for the prompt's first chunk, unweighted."""
        side = self.sides[1]
        ids = side.tokenize(prompt).ids[:CHUNK_TOKENS]
        return side.text_encoder(side.chunk_ids(ids), attention_mask=None)[0].to(side.text_encoder.dtype)

    def encode_pair(self, prompt: str, negative_prompt: str) -> dict[str, torch.Tensor]:
        """The four conditioning tensors of `AnimateDiffSDXLPipeline.__call__`, prompt and negative with the same
        number of chunks."""
        chunks = max(side.tokenize(text).chunks for side in self.sides for text in (prompt, negative_prompt))
        embeds, pooled = self.encode(prompt, chunks), self.pooled(prompt)
        if negative_prompt == "" and self.pipeline.config.force_zeros_for_empty_prompt:
            negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            negative, negative_pooled = self.encode(negative_prompt, chunks), self.pooled(negative_prompt)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative, "pooled_prompt_embeds": pooled,
                "negative_pooled_prompt_embeds": negative_pooled}


class SDXLMagicPipeline(MagicPipeline):
    """MagicPipeline on `AnimateDiffSDXLPipeline`: text→video from the 3D prior, prompts encoded by
    `SDXLPromptEncoder` (identity tokens expanded in each tokenizer by its textual-inversion loader)."""

    def __init__(self, t2v: AnimateDiffSDXLPipeline, motion_version: str, max_frames: int, family: str = NAME):
        super().__init__(t2v, motion_version, max_frames, family)
        self.prompts = SDXLPromptEncoder(t2v)

    def make_v2v(self, t2v: AnimateDiffSDXLPipeline) -> None:
        return None  # diffusers has no AnimateDiff SDXL video→video pipeline; `check` refuses such stages

    def decode_options(self) -> dict:
        return {}  # AnimateDiffSDXLPipeline decodes all frames at once (no decode_chunk_size)

    def video_to_video(self, *args, **kwargs):
        raise ConfigError("stages: video→video (face, tiled, edit) is not available for model.family sdxl yet; see "
                          "docs/sdxl.md")

    @contextlib.contextmanager
    def conditioned(self, prompt: Prompt, negative_prompt: Prompt, frames: int, pipeline_kwargs: dict):
        """Weighted, chunked SD-XL conditioning of the prompt pair, unless the caller gave its own embeddings.
        Prompt travel would also need the pooled embedding to travel: an error naming the prompt for now."""
        if pipeline_kwargs.get("prompt_embeds") is not None:
            yield {"prompt": prompt, "negative_prompt": negative_prompt or None}
            return
        for key, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if travels(text):
                raise ConfigError(f"prompts: prompt travel is not supported with model.family sdxl yet; give {key} as "
                                  f"one text")
        yield self.prompts.encode_pair(keyframes(prompt)[0], keyframes(negative_prompt)[0])


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
    place(pipe, device_, attention, vae_slicing, cpu_offload)
    return SDXLMagicPipeline(pipe, motion_version=info.version, max_frames=info.max_seq_length, family=NAME)
