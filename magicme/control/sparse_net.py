"""SparseCtrl residuals inside our own denoising loops, with diffusers' SparseControlNetModel.

diffusers' `AnimateDiffSparseControlNetPipeline` (and AnimateDiff's own SparseCtrl pipeline) place the K keyframes'
conditioning at their frames of an otherwise zero (B, C, F, H, W) tensor with a (B, 1, F, H, W) mask that is 1 at
exactly those frames (`keyframe_conditioning`), and at every step run the net on the latents as the UNet gets them
(the net zeroes them itself: SparseCtrl's `set_noisy_sample_input_to_zero`), the UNet's per-frame text rows and that
conditioning; its residuals go to the UNet as `down_block_additional_residuals` / `mid_block_additional_residual`.
rgb nets get the keyframes as VAE latents (`use_simplified_condition_embedding`), scribble nets as [0, 1] pixels.
The latents are the VAE posterior mean (MagicPipeline.encode_video), not a draw as diffusers takes, so nothing
random enters outside the run's seed.

`SparseControl` is a residual source for magicme/control/nets.py's `residual_unet`, as the ControlNets are: one
call per step, `start`/`end` as diffusers' `controlnet_keep`, its residuals added to ones a ControlNet wrapper
outside it already passes (diffusers' MultiControlNet sums its nets' residuals the same way). It sits outside the
context windows: the net has its own temporal layers and sees every frame at once, each window takes its frames'
residual rows.
"""

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import SparseControlNetModel

from magicme.control.nets import active


def keyframe_conditioning(keyframes: torch.Tensor, indices: list[int],
                          frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditioning (1, C, F, H, W), mask (1, 1, F, H, W)) of K keyframes (K, C, H, W) at frames `indices`: the
    k-th keyframe at frame indices[k], zeros elsewhere; the mask 1 at exactly those frames."""
    if len(indices) != len(keyframes) or len(set(indices)) != len(indices):
        raise ValueError(f"{len(keyframes)} keyframes need as many distinct frame indices, got {indices}")
    _, channels, height, width = keyframes.shape
    cond = keyframes.new_zeros((1, channels, frames, height, width))
    mask = keyframes.new_zeros((1, 1, frames, height, width))
    cond[0, :, indices] = keyframes.transpose(0, 1)
    mask[0, :, indices] = 1
    return cond, mask


@dataclass
class SparseControl:
    """A loaded SparseCtrl net and its keyframe conditioning at the run's size."""

    net: SparseControlNetModel
    cond: torch.Tensor  # (1, C, F, H, W): latents (rgb) or pixels (scribble) at the keyframes, zeros elsewhere
    mask: torch.Tensor  # (1, 1, F, H, W): 1 at the keyframes
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0

    @classmethod
    def load(cls, model: str, kind: str, images: np.ndarray, indices: list[int], frames: int, scale: float,
             start: float, end: float, pipe) -> "SparseControl":
        """The net from a diffusers folder (offline) in `pipe`'s precision; `images` (K, H, W, 3) in [0, 1], the
        run's size, are VAE-encoded with `pipe` for an rgb net and stay pixels for a scribble net."""
        net = SparseControlNetModel.from_pretrained(model, torch_dtype=pipe.dtype, local_files_only=True)
        net = net.to(pipe.device).eval()
        if kind == "rgb":
            keyframes = pipe.encode_video(images)[0].transpose(0, 1)  # (K, 4, h, w), scaled for the UNet
        else:
            keyframes = torch.from_numpy(images).permute(0, 3, 1, 2)
        cond, mask = keyframe_conditioning(keyframes.to(pipe.device, pipe.dtype), indices, frames)
        return cls(net, cond, mask, scale, start, end)

    def scales_at(self, step: int, steps: int) -> list[float]:
        """The conditioning scale at `step` of `steps`: `scale` while active, else 0 (the net is not run)."""
        return [self.scale * active(step, steps, self.start, self.end)]

    @torch.no_grad()
    def residuals(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                  scales: list[float]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The residuals scaled by `scales`' one entry, rows (B·F, …) batch-major, for latents (B, C, F, h, w) and
        their (B·F, T, D) text rows."""
        batch, frames = sample.shape[0], sample.shape[2]
        if self.cond.shape[2] != frames:
            raise ValueError(f"the keyframe conditioning has {self.cond.shape[2]} frames; the latents {frames}")
        dtype = self.net.dtype
        down, mid = self.net(sample.to(dtype), timestep, encoder_hidden_states=encoder_hidden_states.to(dtype),
                             controlnet_cond=self.cond.expand(batch, -1, -1, -1, -1),
                             conditioning_mask=self.mask.expand(batch, -1, -1, -1, -1), conditioning_scale=scales[0],
                             return_dict=False)
        return tuple(r.to(sample.dtype) for r in down), mid.to(sample.dtype)
