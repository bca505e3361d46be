"""The SD-XL model family: SD-XL bases (stable-diffusion-xl-base-1.0 and fine-tunes) + the AnimateDiff SDXL motion
module (`mm_sdxl_v10_beta.ckpt`), with identities that have vectors for both SD-XL text encoders.

Composed from diffusers: the base's components (two tokenizers and CLIP text encoders, the second with projection),
a `UNetMotionModel` with the motion module read by magicme/motion_module.py (`motion_unet`), and
`AnimateDiffSDXLPipeline`, which encodes the prompt with both encoders and adds SD-XL's micro-conditioning (sizes,
crop). T2V starts from the 3D noise prior as for SD1.5 (magicme/pipeline.py); video→video (Face/Tiled VCD, editing)
runs the same pipeline over the last steps of a schedule from prior-noised latents (`last_steps`), as diffusers has no
AnimateDiff SD-XL video→video pipeline. Prompts are weighted, chunked and travel as for SD1.5, per encoder
(`SDXLPromptEncoder`). What is not here yet is listed in docs/sdxl.md; each is one clear error before sampling.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AnimateDiffSDXLPipeline, AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from magicme.devices import resolve_device, resolve_dtype
from magicme.embeddings import load_into_sdxl_pipeline
from magicme.errors import ConfigError
from magicme.families import sd15
from magicme.families.sd15 import check as check_schedulers
from magicme.families.sd15 import load_vae
from magicme.inspector import is_hub_id
from magicme.motion_module import load_motion_adapter, motion_unet
from magicme.pipeline import MagicPipeline, place
from magicme.prompt_encoding import PromptEncoder, TokenizedPrompt, common_chunks
from magicme.prompts import Prompt, keyframes, travels
from magicme.travel import interpolate, per_frame_conditioning

NAME = "sdxl"
CONTROL = False  # SD-XL ControlNets are not wired yet (docs/control.md)
# The betas AnimateDiff SD-XL samples with (guoyww/AnimateDiff, branch sdxl, configs/inference/inference.yaml, read by
# its scripts/animate.py for an EulerDiscreteScheduler with leading spacing, steps_offset 1): SD-XL's own
# scaled_linear schedule from 0.00085, but ending at 0.020 instead of SD-XL's 0.012.
SDXL_BETAS = {"beta_start": 0.00085, "beta_end": 0.020, "beta_schedule": "scaled_linear",
              "num_train_timesteps": 1000}
__all__ = ["NAME", "check", "last_steps", "load", "make_scheduler", "scheduler_spec", "SDXLMagicPipeline",
           "SDXLPromptEncoder"]


def scheduler_spec(scheduler, key: str = "model.scheduler") -> tuple[type, dict]:
    """A scheduler block's diffusers class and arguments: SD1.5's presets, SD-XL AnimateDiff's betas."""
    return sd15.scheduler_spec(scheduler, key, betas=SDXL_BETAS)


def make_scheduler(scheduler, key: str = "model.scheduler"):
    """A fresh scheduler from a `{name, kwargs}` block."""
    cls, kwargs = scheduler_spec(scheduler, key)
    return cls(**kwargs)


@dataclass
class SDXLComponents:
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    vae: AutoencoderKL
    unet: UNet2DConditionModel


def check(model, schedulers: dict | None = None, schedules: list | None = None) -> None:
    """The settings this family does not have are errors now, before anything loads; then the schedulers: the
    SD1.5 presets over AnimateDiff SD-XL's betas (`SDXL_BETAS`).

    `model.animatediff_numerics` needs nothing here: the AnimateDiff SD-XL code normalises its motion modules'
    input over all frames and runs the 2D layers per frame, as stock diffusers does (tests/test_parity.py), so
    'original' and 'diffusers' are the same computation; SD1.5's patch (magicme/parity.py) is not applied."""
    if model.get("loras"):
        raise ConfigError("model.loras: image LoRAs are not supported with model.family sdxl yet; remove them")
    if model.get("motion_loras"):
        raise ConfigError("model.motion_loras: the MotionLoRAs are made for SD1.5 v2 modules; remove them for "
                          "model.family sdxl")
    check_schedulers(model, schedulers, schedules, betas=SDXL_BETAS)


def load_base(base: str, base_config: str | None, dtype: torch.dtype,
              vae: AutoencoderKL | None = None) -> SDXLComponents:
    """SD-XL tokenizers, text encoders, VAE and 2D UNet from a diffusers folder (or a Hub id the user wrote) or a
    single file (`sd_xl_base_1.0.safetensors`, fine-tunes), whose component configs and tokenizers come from
    `base_config`, a diffusers SD-XL folder. A given `vae` replaces the base's own, which is then not loaded."""
    if Path(base).is_file():
        extra = {"vae": vae} if vae is not None else {}
        pipe = StableDiffusionXLPipeline.from_single_file(
            base, config=str(base_config), local_files_only=not is_hub_id(str(base_config)), torch_dtype=dtype,
            **extra)
        return SDXLComponents(pipe.tokenizer, pipe.tokenizer_2, pipe.text_encoder, pipe.text_encoder_2, pipe.vae,
                              pipe.unet)
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

    def encode(self, prompt: str, chunks: int | None = None, device: torch.device | None = None) -> torch.Tensor:
        """(1, 77 · n, D1 + D2), repeated whole to `chunks` when given (as `PromptEncoder.encode`)."""
        chunks = chunks or self.chunks(prompt)
        device = device or self.pipeline._execution_device
        return torch.cat([side.encode(prompt, chunks, device) for side in self.sides], dim=-1)

    @torch.no_grad()
    def pooled(self, prompt: str, device: torch.device | None = None) -> torch.Tensor:
        """(1, D2): the second encoder's projected output for the prompt's first chunk, unweighted (ComfyUI pools
        the first chunk too)."""
        side = self.sides[1]
        ids = side.tokenize(prompt).chunks[0].ids
        return side.text_encoder(side.chunk_ids(ids, device or self.pipeline._execution_device),
                                 attention_mask=None)[0].to(side.text_encoder.dtype)

    def chunks(self, *texts: str) -> int:
        """The chunk count the conditionings of `texts` share in both encoders: the least common multiple of
        theirs (the shorter are repeated to it, as ComfyUI does)."""
        return common_chunks(*(side.chunks(*texts) for side in self.sides))

    def conditioning(self, text: str, chunks: int, negative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 77 · chunks, D1 + D2) rows (repeated to `chunks`) and the (1, D2) pooled vector of `text`; zeros for
        an empty negative prompt, as diffusers gives SD-XL (`force_zeros_for_empty_prompt`)."""
        device = self.pipeline._execution_device
        embeds, pooled = self.encode(text, chunks, device), self.pooled(text, device)
        if negative and text == "" and self.pipeline.config.force_zeros_for_empty_prompt:
            return torch.zeros_like(embeds), torch.zeros_like(pooled)
        return embeds, pooled

    def encode_pair(self, prompt: str, negative_prompt: str) -> dict[str, torch.Tensor]:
        """The four conditioning tensors of `AnimateDiffSDXLPipeline.__call__`, prompt and negative repeated to the
        least common multiple of their chunk counts."""
        chunks = self.chunks(prompt, negative_prompt)
        embeds, pooled = self.conditioning(prompt, chunks)
        negative, negative_pooled = self.conditioning(negative_prompt, chunks, negative=True)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative, "pooled_prompt_embeds": pooled,
                "negative_pooled_prompt_embeds": negative_pooled}


@contextlib.contextmanager
def last_steps(scheduler, steps: int) -> Iterator[None]:
    """While active, `scheduler.set_timesteps(n)` builds the n-step schedule but hands its caller only the last `steps`
    timesteps, with the scheduler's step index starting where they start: what diffusers' video→video pipelines do
    with `strength` (`get_timesteps` + `set_begin_index`), for a pipeline that has no `strength`. The scheduler's
    own list is the whole schedule again by the loop's first `scale_model_input`, as multistep and LCM schedulers
    index it."""
    set_timesteps, scale_model_input = scheduler.set_timesteps, scheduler.scale_model_input
    whole = []

    def set_tail(num_inference_steps: int, *args, **kwargs) -> None:
        set_timesteps(num_inference_steps, *args, **kwargs)
        start = (num_inference_steps - steps) * scheduler.order
        whole[:] = [scheduler.timesteps]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        scheduler.timesteps = scheduler.timesteps[start:]

    def scale(sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if whole:
            scheduler.timesteps = whole[0]
        return scale_model_input(sample, *args, **kwargs)

    scheduler.set_timesteps, scheduler.scale_model_input = set_tail, scale
    try:
        yield
    finally:
        del scheduler.set_timesteps, scheduler.scale_model_input
        if whole:
            scheduler.timesteps = whole[0]


class SDXLMagicPipeline(MagicPipeline):
    """MagicPipeline on `AnimateDiffSDXLPipeline`, which serves text→video and video→video: prompts encoded by
    `SDXLPromptEncoder` (identity tokens expanded in each tokenizer by its textual-inversion loader), frames decoded
    by the VAE `vae_chunk` at a time (the pipeline's own decoder takes all frames at once, too much memory at
    1024²)."""

    def __init__(self, t2v: AnimateDiffSDXLPipeline, motion_version: str, max_frames: int, family: str = NAME):
        super().__init__(t2v, motion_version, max_frames, family)
        self.prompts = SDXLPromptEncoder(t2v)

    def make_v2v(self, t2v: AnimateDiffSDXLPipeline) -> AnimateDiffSDXLPipeline:
        return t2v  # diffusers has no AnimateDiff SD-XL video→video pipeline: `partial_schedule` makes one of it

    def output_options(self) -> dict:
        return {"output_type": "latent"}

    @torch.no_grad()
    def frames(self, out) -> np.ndarray:
        """The pipeline's latents decoded `vae_chunk` frames at a time, in fp32 when an fp16 VAE asks for it
        (`force_upcast`, the stock SD-XL VAE), as the pipeline's own decoder does."""
        vae = self.t2v.vae
        latents = out.frames[0].transpose(0, 1) / vae.config.scaling_factor  # (F, C, h, w)
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(torch.float32)
        try:
            pixels = torch.cat([vae.decode(latents[i:i + self.vae_chunk].to(vae.dtype)).sample.float()
                                for i in range(0, len(latents), self.vae_chunk)])
        finally:
            if upcast:
                vae.to(torch.float16)
        video = self.t2v.video_processor.postprocess_video(video=pixels.transpose(0, 1)[None], output_type="np")
        return np.asarray(video[0], dtype=np.float32)

    @contextlib.contextmanager
    def partial_schedule(self, scheduler, length: int, steps: int, noisy: torch.Tensor):
        """The last `steps` of a `length`-step schedule through `last_steps`; the pipeline scales given latents by
        the scheduler's `init_noise_sigma`, which noised latents already carry."""
        with last_steps(scheduler, steps):
            yield {"num_inference_steps": length, "num_frames": noisy.shape[2],
                   "latents": noisy / scheduler.init_noise_sigma}

    @contextlib.contextmanager
    def conditioned(self, prompt: Prompt, negative_prompt: Prompt, frames: int, pipeline_kwargs: dict):
        """Weighted, chunked SD-XL conditioning of the prompt pair, unless the caller gave its own embeddings.

        A travelling prompt travels in the per-frame cross-attention rows, as for SD1.5 (magicme/travel.py). The
        pooled embedding is one vector per video in diffusers' motion UNet (it joins the timestep embedding before
        the frames are split), so it cannot differ per frame: it is the frames' mean of the interpolated pooled
        vectors."""
        if pipeline_kwargs.get("prompt_embeds") is not None:
            yield {"prompt": prompt, "negative_prompt": negative_prompt or None}
            return
        positive, negative = keyframes(prompt), keyframes(negative_prompt)
        if not (travels(prompt) or travels(negative_prompt)):
            yield self.prompts.encode_pair(positive[0], negative[0])
            return
        chunks = self.prompts.chunks(*positive.values(), *negative.values())
        rows, pooled = [], []
        for keyed, is_negative in ((positive, False), (negative, True)):
            encoded = [self.prompts.conditioning(text, chunks, negative=is_negative) for text in keyed.values()]
            rows.append(interpolate([embeds for embeds, _ in encoded], list(keyed), frames))
            pooled.append(interpolate([vector for _, vector in encoded], list(keyed), frames).mean(0, keepdim=True))
        with per_frame_conditioning(self.t2v.unet, *rows):
            yield {"prompt_embeds": rows[0][:1], "negative_prompt_embeds": rows[1][:1],
                   "pooled_prompt_embeds": pooled[0], "negative_pooled_prompt_embeds": pooled[1]}
def load(model, embeddings: dict[str, Path] | None = None, device: str = "auto", precision: str = "auto",
         attention: str = "sdpa", vae_slicing: bool = False, cpu_offload: bool = False) -> SDXLMagicPipeline:
    """Build the T2V pipeline from a checked `model:` block, with the identities the prompts use registered as
    tokens `<name>` in both text encoders."""
    device_ = resolve_device(device)
    dtype = resolve_dtype(precision, device_)
    vae = load_vae(str(model.vae), model.get("base_config") or str(model.base), dtype) if model.get("vae") else None
    base = load_base(str(model.base), model.get("base_config"), dtype, vae=vae)
    adapter, info = load_motion_adapter(model.motion_module, family=NAME)
    unet = motion_unet(base.unet, adapter)
    if unet.dtype != dtype:
        unet.to(dtype)
    pipe = AnimateDiffSDXLPipeline(
        vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2, tokenizer=base.tokenizer,
        tokenizer_2=base.tokenizer_2, unet=unet, motion_adapter=None, scheduler=make_scheduler(model.scheduler),
    )
    load_into_sdxl_pipeline(pipe, embeddings or {})
    place(pipe, device_, attention, vae_slicing, cpu_offload)
    return SDXLMagicPipeline(pipe, motion_version=info.version, max_frames=info.max_seq_length, family=NAME)
