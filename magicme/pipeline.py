"""Text→video and video→video on diffusers' AnimateDiff pipelines, started from the 3D Gaussian noise prior.

Both pipelines share one set of components (one UNet in memory). diffusers accepts initial `latents`, so the prior
needs no fork of the denoising loop: T2V gets prior noise (scaled by the scheduler's `init_noise_sigma` inside the
pipeline); V2V gets clean latents of the input video noised with prior noise to the first kept timestep.

Any other keyword argument the diffusers pipeline's `__call__` accepts (`prompt_embeds`, `callback_on_step_end`,
`ip_adapter_image`, `cross_attention_kwargs`, …) passes straight through, so new conditioning needs no change here.
"""

import contextlib
import inspect

import numpy as np
import torch
from diffusers import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline

from magicme.context import ContextSettings, windowed_unet
from magicme.noise_prior import noise_latents, sample_noise_prior
from magicme.prompt_encoding import PromptEncoder
from magicme.prompts import Prompt, keyframes, travels
from magicme.steps import denoising_steps
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


class MagicPipeline:
    """The loaded models plus the two operations every stage is made of."""

    # Frames the VAE encodes/decodes at once. 4 instead of diffusers' 16: the VAE decoder, not the UNet, sets the
    # peak memory of a 16 × 512² video (H100, fp16: 12.4 → 5.3 GB for 4.53 → 4.70 s).
    vae_chunk = 4

    def __init__(self, t2v: AnimateDiffPipeline, motion_version: str, max_frames: int, family: str = "sd15"):
        self.t2v = t2v
        self.v2v = AnimateDiffVideoToVideoPipeline(**t2v.components)
        self.motion_version = motion_version
        self.max_frames = max_frames
        self.family = family
        self.prompts = PromptEncoder(t2v)  # comfy weighting; a run sets `prompts.weighting` from its config
        self.context: ContextSettings | None = None  # context windows for videos longer than the motion module

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
        chunks = max(self.prompts.tokenize(text).chunks for text in [*positive.values(), *negative.values()])
        rows = [interpolate([self.prompts.encode(text, chunks) for text in keyed.values()], list(keyed), frames)
                for keyed in (positive, negative)]
        with per_frame_conditioning(self.t2v.unet, *rows):
            yield {"prompt_embeds": rows[0][:1], "negative_prompt_embeds": rows[1][:1]}

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        s = self.vae_scale_factor
        return (1, self.t2v.unet.config.in_channels, frames, height // s, width // s)

    def text_to_video(self, prompt: Prompt, negative_prompt: Prompt, generator: torch.Generator, *, gamma: float,
                      frames: int, height: int, width: int, steps: int, guidance_scale: float,
                      progress: bool = True, **pipeline_kwargs) -> np.ndarray:
        """A (frames, height, width, 3) video in [0, 1] from prior noise drawn with `generator`; other keyword
        arguments go to `AnimateDiffPipeline.__call__`."""
        latents = sample_noise_prior(self.latent_shape(frames, height, width), gamma, generator,
                                     device=self.device, dtype=self.dtype)
        self.t2v.set_progress_bar_config(disable=not progress, leave=False)
        with windowed_unet(self.t2v.unet, self.context), \
                self.conditioned(prompt, negative_prompt, frames, pipeline_kwargs) as prompt_kwargs:
            out = self.t2v(**passthrough(self.t2v, pipeline_kwargs, dict(
                **prompt_kwargs, num_frames=frames, height=height, width=width, num_inference_steps=steps,
                guidance_scale=guidance_scale, latents=latents, generator=generator, output_type="np",
                decode_chunk_size=self.vae_chunk,
            )))
        return np.asarray(out.frames[0], dtype=np.float32)

    @torch.no_grad()
    def encode_video(self, video: np.ndarray) -> torch.Tensor:
        """Clean latents (1, C, F, h, w) of a [0, 1] video: the VAE posterior mean, scaled for the UNet."""
        vae = self.t2v.vae
        pixels = torch.from_numpy(video).permute(0, 3, 1, 2).to(self.device, vae.dtype) * 2.0 - 1.0
        chunk = self.vae_chunk
        latents = torch.cat([vae.encode(pixels[i:i + chunk]).latent_dist.mode() for i in range(0, len(pixels), chunk)])
        return (latents * vae.config.scaling_factor).permute(1, 0, 2, 3).unsqueeze(0).to(self.dtype)

    def video_to_video(self, video: np.ndarray, prompt: Prompt, negative_prompt: Prompt, generator: torch.Generator, *,
                       gamma: float, strength: float, steps: int, guidance_scale: float,
                       progress: bool = True, **pipeline_kwargs) -> np.ndarray:
        """Partially noise `video` (strength s → round(s·steps) steps) with the prior and denoise it with `prompt`.

        Strength 0 returns the input unchanged (no VAE round trip); strength 1 is T2V guided only by the video's
        frame count and size. Other keyword arguments go to `AnimateDiffVideoToVideoPipeline.__call__`.
        """
        frames, height, width, _ = video.shape
        n = denoising_steps(strength, steps)
        if n == 0:
            return video.copy()
        scheduler = self.v2v.scheduler
        scheduler.set_timesteps(steps, device=self.device)
        first_t = scheduler.timesteps[(steps - n) * scheduler.order]
        clean = self.encode_video(video)
        noise = sample_noise_prior(tuple(clean.shape), gamma, generator, device=self.device, dtype=self.dtype)
        noisy = noise_latents(clean, noise, scheduler, first_t)
        self.v2v.set_progress_bar_config(disable=not progress, leave=False)
        with windowed_unet(self.t2v.unet, self.context), \
                self.conditioned(prompt, negative_prompt, frames, pipeline_kwargs) as prompt_kwargs:
            out = self.v2v(**passthrough(self.v2v, pipeline_kwargs, dict(
                **prompt_kwargs, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance_scale,
                # diffusers keeps int(strength · steps) steps; asking for (n + 0.5) / steps makes that exactly n.
                strength=min(1.0, (n + 0.5) / steps), latents=noisy, generator=generator, output_type="np",
                decode_chunk_size=self.vae_chunk,
            )))
        return np.asarray(out.frames[0], dtype=np.float32)
