"""SparseCtrl residuals inside our own denoising loops, with diffusers' SparseControlNetModel.

diffusers' `AnimateDiffSparseControlNetPipeline` (and AnimateDiff's own SparseCtrl pipeline) place the K keyframes'
conditioning at their frames of an otherwise zero (B, C, F, H, W) tensor with a (B, 1, F, H, W) mask that is 1 at
exactly those frames (`keyframe_conditioning`), and at every step run the net on the latents as the UNet gets them
(the net zeroes them itself: SparseCtrl's `set_noisy_sample_input_to_zero`), the UNet's per-frame text rows and that
conditioning; its residuals go to the UNet as `down_block_additional_residuals` / `mid_block_additional_residual`.
rgb nets get the keyframes as VAE latents (`use_simplified_condition_embedding`), scribble nets as [0, 1] pixels.
The latents are the VAE posterior mean (MagicPipeline.encode_video), not a draw as diffusers takes, so nothing
random enters outside the run's seed.

`sparse_unet` wraps `unet.forward` as magicme/control/nets.py's `controlled_unet` does, one call per step, with
`start`/`end` as diffusers' `controlnet_keep`; it adds its residuals to ones a ControlNet wrapper outside it already
passes (diffusers' MultiControlNet sums its nets' residuals the same way). It sits outside the context windows: the
net has its own temporal layers and sees every frame at once, each window takes its frames' residual rows.
"""

import contextlib
import inspect
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import SparseControlNetModel

from magicme.context import call_arguments
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

    def scale_at(self, step: int, steps: int) -> float:
        """The conditioning scale at `step` of `steps`: `scale` while active, else 0 (the net is not run)."""
        return self.scale * active(step, steps, self.start, self.end)

    @torch.no_grad()
    def residuals(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                  scale: float) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The scaled residuals, rows (B·F, …) batch-major, for latents (B, C, F, h, w) and their (B·F, T, D) text
        rows."""
        batch, frames = sample.shape[0], sample.shape[2]
        if self.cond.shape[2] != frames:
            raise ValueError(f"the keyframe conditioning has {self.cond.shape[2]} frames; the latents {frames}")
        dtype = self.net.dtype
        down, mid = self.net(sample.to(dtype), timestep, encoder_hidden_states=encoder_hidden_states.to(dtype),
                             controlnet_cond=self.cond.expand(batch, -1, -1, -1, -1),
                             conditioning_mask=self.mask.expand(batch, -1, -1, -1, -1), conditioning_scale=scale,
                             return_dict=False)
        return tuple(r.to(sample.dtype) for r in down), mid.to(sample.dtype)


@contextlib.contextmanager
def sparse_unet(unet: torch.nn.Module, sparse: SparseControl | None,
                loop_length: Callable[[], int]) -> Iterator[None]:
    """Inside the block, the k-th UNet call (step k) gets the SparseCtrl residuals when the net is active at step
    k, added to residuals the caller already passes; inactive or scale 0: the call is untouched. None: nothing
    changes. `loop_length()` is read at the first call, as in `controlled_unet`."""
    if sparse is None:
        yield
        return
    own = unet.__dict__.get("forward")  # an instance-level forward of an inner wrapper (context windows)
    forward = unet.forward
    signature = inspect.signature(type(unet).forward)
    calls = itertools.count()
    steps = 0

    def with_sparse_control(*args, **kwargs):
        nonlocal steps
        step = next(calls)
        steps = steps or loop_length()
        if step >= steps:
            raise RuntimeError(f"sparse_unet: UNet call {step + 1} in a loop of {steps} steps")
        scale = sparse.scale_at(step, steps)
        if not scale:
            return forward(*args, **kwargs)
        arguments = call_arguments(signature, unet, args, kwargs)
        down, mid = sparse.residuals(arguments["sample"], arguments["timestep"], arguments["encoder_hidden_states"],
                                     scale)
        given_down = arguments.pop("down_block_additional_residuals", None)
        given_mid = arguments.pop("mid_block_additional_residual", None)
        if given_down is not None:
            down = tuple(a + b for a, b in zip(given_down, down, strict=True))
        if given_mid is not None:
            mid = given_mid + mid
        return forward(**arguments, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    unet.forward = with_sparse_control
    try:
        yield
    finally:
        if own is None:
            del unet.forward
        else:
            unet.forward = own
