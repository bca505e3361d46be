"""Text→video and video→video on diffusers' AnimateDiff pipelines, started from the 3D Gaussian noise prior.

Both pipelines share one set of components (one UNet in memory). diffusers accepts initial `latents`, so the prior
needs no fork of the denoising loop: T2V gets prior noise (scaled by the scheduler's `init_noise_sigma` inside the
pipeline); V2V gets clean latents of the input video noised with prior noise to the first kept timestep.

Any other keyword argument the diffusers pipeline's `__call__` accepts (`prompt_embeds`, `callback_on_step_end`,
`ip_adapter_image`, `cross_attention_kwargs`, …) passes straight through, so new conditioning needs no change here.
ControlNets (magicme/control/nets.py) and a SparseCtrl net (magicme/control/sparse_net.py) join the same way, as
wrappers of the UNet's calls during one operation.
"""

import contextlib
import inspect

import numpy as np
import torch
from diffusers import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline

from magicme.context import ContextSettings, windowed_unet
from magicme.control.nets import Control, residual_unet
from magicme.control.sparse_net import SparseControl
from magicme.noise_prior import noise_latents, sample_noise_prior
from magicme.prompt_encoding import PromptEncoder
from magicme.prompts import Prompt, keyframes, travels
from magicme.steps import schedule_length
from magicme.travel import interpolate, per_frame_conditioning


def passthrough(pipeline, kwargs: dict, ours: dict) -> dict:
    """`ours` updated with the caller's `kwargs`, after checking the diffusers pipeline accepts each of them.

    The prior's `latents` stay ours: overriding them would silently drop the 3D noise prior.
    """
    accepted = set(inspect.signature(type(pipeline).__call__).parameters) - {"self", "latents"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(f"{type(pipeline).__name__} does not accept {', '.join(unknown)}; "
                        f"it accepts {', '.join(sorted(accepted))}")
    merged = {**ours, **kwargs}
    if merged.get("prompt_embeds") is not None:  # embeddings given: the prompt strings must not be encoded too
        merged["prompt"] = None
    if merged.get("negative_prompt_embeds") is not None:
        merged["negative_prompt"] = None
    return merged


def place(pipe, device: torch.device, attention: str, vae_slicing: bool, cpu_offload: bool) -> None:
    """The run-wide attention and memory options, the same for every family's diffusers pipeline: xformers,
    frame-by-frame VAE decoding, and either model CPU offload or the whole pipeline on `device`."""
    if attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    if vae_slicing:
        pipe.vae.enable_slicing()
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)


class MagicPipeline:
    """The loaded models plus the two operations every stage is made of."""

    # Frames the VAE encodes/decodes at once. 4 instead of diffusers' 16: the VAE decoder, not the UNet, sets the
    # peak memory of a 16 × 512² video (H100, fp16: 12.4 → 5.3 GB for 4.53 → 4.70 s).
    vae_chunk = 4

    def __init__(self, t2v: AnimateDiffPipeline, motion_version: str, max_frames: int, family: str = "sd15"):
        self.t2v = t2v
        self.v2v = self.make_v2v(t2v)
        self.motion_version = motion_version
        self.max_frames = max_frames
        self.family = family
        self.prompts = PromptEncoder(t2v)  # comfy weighting; a run sets `prompts.weighting` from its config
        self.context: ContextSettings | None = None  # context windows for videos longer than the motion module

    def make_v2v(self, t2v: AnimateDiffPipeline) -> AnimateDiffVideoToVideoPipeline | None:
        """The video→video pipeline on the same components (a family without one returns None)."""
        return AnimateDiffVideoToVideoPipeline(**t2v.components)

    def output_options(self) -> dict:
        """The pipelines' output arguments: [0, 1] frames, VAE-decoded `vae_chunk` frames at a time."""
        return {"output_type": "np", "decode_chunk_size": self.vae_chunk}

    def frames(self, out) -> np.ndarray:
        """The (frames, height, width, 3) [0, 1] video of a pipeline's output."""
        return np.asarray(out.frames[0], dtype=np.float32)

    @contextlib.contextmanager
    def partial_schedule(self, scheduler, length: int, steps: int, noisy: torch.Tensor):
        """The video→video pipeline's arguments that make it denoise `noisy` over the last `steps` steps of a
        `length`-step schedule (the scheduler's timesteps are already set to `length`)."""
        # diffusers keeps int(strength · length) steps; (steps + 0.5) / length makes that exactly steps
        yield {"num_inference_steps": length, "strength": min(1.0, (steps + 0.5) / length), "latents": noisy}

    @property
    def device(self) -> torch.device:
        return self.t2v._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.t2v.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        return self.t2v.vae_scale_factor

    @contextlib.contextmanager
    def conditioned(self, prompt: Prompt, negative_prompt: Prompt, frames: int, pipeline_kwargs: dict):
        """The pipeline's prompt arguments: weighted, chunked embeddings (magicme/prompt_encoding.py), unless the
        caller gave its own; for a travelling prompt (magicme/travel.py), each frame's interpolated conditioning is
        swapped into the UNet for the duration of the call."""
        if pipeline_kwargs.get("prompt_embeds") is not None:
            yield {"prompt": prompt, "negative_prompt": negative_prompt or None}
            return
        positive, negative = keyframes(prompt), keyframes(negative_prompt)
        if not (travels(prompt) or travels(negative_prompt)):
            embeds, negative_embeds = self.prompts.encode_pair(positive[0], negative[0])
            yield {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}
            return
        chunks = self.prompts.chunks(*positive.values(), *negative.values())  # repeated to their common multiple
        rows = [interpolate([self.prompts.encode(text, chunks) for text in keyed.values()], list(keyed), frames)
                for keyed in (positive, negative)]
        with per_frame_conditioning(self.t2v.unet, *rows):
            yield {"prompt_embeds": rows[0][:1], "negative_prompt_embeds": rows[1][:1]}

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        s = self.vae_scale_factor
        return (1, self.t2v.unet.config.in_channels, frames, height // s, width // s)

    def text_to_video(self, prompt: Prompt, negative_prompt: Prompt, generator: torch.Generator, *, gamma: float,
                      frames: int, height: int, width: int, steps: int, guidance_scale: float,
                      progress: bool = True, desc: str = "t2v", control: Control | None = None,
                      sparse: SparseControl | None = None, **pipeline_kwargs) -> np.ndarray:
        """A (frames, height, width, 3) video in [0, 1] from prior noise drawn with `generator`, guided by the
        ControlNets of `control` (magicme/control/nets.py) and the SparseCtrl keyframes of `sparse`
        (magicme/control/sparse_net.py); other keyword arguments go to `AnimateDiffPipeline.__call__`. `desc` names the
        step bar (the stage)."""
        latents = sample_noise_prior(self.latent_shape(frames, height, width), gamma, generator,
                                     device=self.device, dtype=self.dtype)
        self.t2v.set_progress_bar_config(disable=not progress, leave=False, desc=desc)
        with windowed_unet(self.t2v.unet, self.context), \
                residual_unet(self.t2v.unet, sparse, lambda: len(self.t2v.scheduler.timesteps)), \
                residual_unet(self.t2v.unet, control, lambda: len(self.t2v.scheduler.timesteps)), \
                self.conditioned(prompt, negative_prompt, frames, pipeline_kwargs) as prompt_kwargs:
            out = self.t2v(**passthrough(self.t2v, pipeline_kwargs, dict(
                **prompt_kwargs, num_frames=frames, height=height, width=width, num_inference_steps=steps,
                guidance_scale=guidance_scale, latents=latents, generator=generator, **self.output_options(),
            )))
        return self.frames(out)

    @torch.no_grad()
    def encode_video(self, video: np.ndarray) -> torch.Tensor:
        """Clean latents (1, C, F, h, w) of a [0, 1] video: the VAE posterior mean, scaled for the UNet."""
        vae = self.t2v.vae
        pixels = torch.from_numpy(video).permute(0, 3, 1, 2).to(self.device, vae.dtype) * 2.0 - 1.0
        chunk = self.vae_chunk
        latents = torch.cat([vae.encode(pixels[i:i + chunk]).latent_dist.mode() for i in range(0, len(pixels), chunk)])
        return (latents * vae.config.scaling_factor).permute(1, 0, 2, 3).unsqueeze(0).to(self.dtype)

    @contextlib.contextmanager
    def using_scheduler(self, scheduler):
        """The video→video pipeline with `scheduler` in place of the model's for one call (a stage's own sampler,
        as the Magic-Me graph's face detailer ran Euler while T2V ran DPM++ 2M Karras); None = the model's."""
        own = self.v2v.scheduler
        if scheduler is not None:
            self.v2v.scheduler = scheduler
        try:
            yield self.v2v.scheduler
        finally:
            self.v2v.scheduler = own

    def video_to_video(self, video: np.ndarray, prompt: Prompt, negative_prompt: Prompt, generator: torch.Generator, *,
                       gamma: float, strength: float, steps: int, guidance_scale: float, progress: bool = True,
                       desc: str = "v2v", scheduler=None, mask: np.ndarray | None = None, control: Control | None = None,
                       sparse: SparseControl | None = None, **pipeline_kwargs) -> np.ndarray:
        """Noise `video` with the prior to the level `strength` selects and denoise it for `steps` steps with
        `prompt`: the last `steps` of a schedule of int(steps / strength) (magicme/steps.py, ComfyUI's `denoise`).

        `mask` ((H, W) or (F, H, W) in [0, 1], the video's size) makes it inpainting: after every step the latents
        where the mask is 0 are put back to the video's own, noised to the next step's level (clean after the last),
        so only the masked region is regenerated (ComfyUI's `noise_mask`). Strength 0 returns the input unchanged
        (no VAE round trip). `scheduler` replaces the model's for this call. `control` adds ControlNet guidance
        over the steps run (its start/end are fractions of them, as in diffusers), `sparse` SparseCtrl keyframe
        guidance the same way. Other keyword arguments go to `AnimateDiffVideoToVideoPipeline.__call__`. `desc`
        names the step bar (the stage, and which face or tile).
        """
        frames, height, width, _ = video.shape
        if strength == 0:
            return video.copy()
        length = schedule_length(steps, strength)
        with self.using_scheduler(scheduler) as sched:
            sched.set_timesteps(length, device=self.device)
            run = sched.timesteps[(length - steps) * sched.order:]
            clean = self.encode_video(video)
            noise = sample_noise_prior(tuple(clean.shape), gamma, generator, device=self.device, dtype=self.dtype)
            noisy = noise_latents(clean, noise, sched, run[0])
            ours = dict(height=height, width=width, guidance_scale=guidance_scale, generator=generator,
                        **self.output_options())
            if mask is not None:
                if sched.order != 1:
                    raise ValueError(f"masked denoising needs a first-order scheduler; {type(sched).__name__} has "
                                     f"order {sched.order}")
                keep = 1.0 - self.latent_mask(mask, clean.shape)
                ours["callback_on_step_end"] = keep_known_latents(
                    clean, noise, run, keep, then=pipeline_kwargs.pop("callback_on_step_end", None))
            self.v2v.set_progress_bar_config(disable=not progress, leave=False, desc=desc)
            with windowed_unet(self.t2v.unet, self.context), residual_unet(self.t2v.unet, sparse, lambda: len(run)), \
                    residual_unet(self.t2v.unet, control, lambda: len(run)), \
                    self.conditioned(prompt, negative_prompt, frames, pipeline_kwargs) as prompt_kwargs, \
                    self.partial_schedule(sched, length, steps, noisy) as schedule_kwargs:
                out = self.v2v(**passthrough(self.v2v, pipeline_kwargs, {**prompt_kwargs, **ours, **schedule_kwargs}))
        return self.frames(out)

    def latent_mask(self, mask: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
        """A pixel mask ((H, W) or (F, H, W)) at the latents' resolution, (1, 1, F or 1, h, w), bilinear as
        ComfyUI's `prepare_mask` resizes a noise mask."""
        pixels = torch.as_tensor(np.asarray(mask, dtype=np.float32), device=self.device)
        pixels = pixels.reshape(-1, 1, *pixels.shape[-2:])
        small = torch.nn.functional.interpolate(pixels, size=tuple(shape[-2:]), mode="bilinear")
        return small.permute(1, 0, 2, 3).unsqueeze(0).to(self.dtype)


def keep_known_latents(clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, keep: torch.Tensor,
                       then=None):
    """A `callback_on_step_end` that, after step i, sets the latents where `keep` is 1 to `clean` noised to the
    level of step i + 1 (`clean` itself after the last step), blending by `keep` in between; `then` is the caller's
    own callback, run afterwards (as ComfyUI re-imposes them before each model call; for first-order samplers the
    two are the same)."""
    def callback(pipe, i: int, t, tensors: dict) -> dict:
        latents = tensors["latents"]
        known = clean if i + 1 >= len(timesteps) else noise_latents(clean, noise, pipe.scheduler, timesteps[i + 1])
        # keep·known + (1 − keep)·latents: exactly `known` where keep is 1, exactly `latents` where it is 0
        tensors = {**tensors, "latents": keep * known.to(latents.dtype) + (1 - keep) * latents}
        return then(pipe, i, t, tensors) if then is not None else tensors

    return callback
