"""ControlNet residuals inside our own denoising loops, with diffusers' ControlNetModel / MultiControlNetModel.

diffusers' AnimateDiff ControlNet pipelines, at every step i of T: run the ControlNets on the latents flattened to
(batch·frames, C, h, w) with the same per-frame text conditioning as the UNet and the control frames repeated for the
guidance batch, each net's residuals × its scale (× 0 outside its [start, end] share of the steps), summed over the
nets; then pass them to the UNet as `down_block_additional_residuals` / `mid_block_additional_residual`.
`residual_unet` does exactly that around `unet.forward`, so the AnimateDiff pipelines that MagicPipeline already
drives (3D noise prior, ID tokens, weighted and travelling prompts, FreeU) gain the control without a fork. It sits
outside the context windows (magicme/context.py): the nets see every frame at once (they are per-frame 2D models),
and the windows take the residual rows of their own frames.
"""

import contextlib
import inspect
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from diffusers import ControlNetModel
from diffusers.models.controlnets import MultiControlNetModel

from magicme.context import call_arguments


def active(step: int, steps: int, start: float, end: float) -> bool:
    """Whether a net acts at step `step` of `steps`: diffusers' `controlnet_keep` (start ≤ i/T, (i+1)/T ≤ end)."""
    return not (step / steps < start or (step + 1) / steps > end)


def load_controlnet(model: str, config: str | None, dtype: torch.dtype) -> ControlNetModel:
    """A diffusers ControlNet folder, or a single file in the original layout read by diffusers' converter with the
    architecture of the diffusers folder `config`."""
    if config is None:
        return ControlNetModel.from_pretrained(model, torch_dtype=dtype, local_files_only=True)
    return ControlNetModel.from_single_file(model, config=config, torch_dtype=dtype, local_files_only=True)


@dataclass
class Control:
    """The loaded ControlNets of a run and their control videos."""

    nets: MultiControlNetModel
    videos: list[torch.Tensor]  # per net (frames, 3, H, W) in [0, 1], the nets' device and dtype
    scales: list[float]
    starts: list[float]
    ends: list[float]

    @classmethod
    def load(cls, models: list[str], videos: list[np.ndarray], scales: list[float], starts: list[float],
             ends: list[float], device, dtype: torch.dtype, configs: list[str | None] | None = None) -> "Control":
        """Nets (offline) from diffusers folders or single files with their config folders, and [0, 1]
        (F, H, W, 3) videos at the run's size."""
        nets = [load_controlnet(m, c, dtype) for m, c in zip(models, configs or [None] * len(models), strict=True)]
        frames = [torch.from_numpy(v).permute(0, 3, 1, 2).to(device, dtype) for v in videos]
        return cls(MultiControlNetModel(nets).to(device).eval(), frames, scales, starts, ends)

    def scales_at(self, step: int, steps: int) -> list[float]:
        """Each net's conditioning scale at `step` of `steps`: its scale while active, else 0."""
        return [scale * active(step, steps, start, end)
                for scale, start, end in zip(self.scales, self.starts, self.ends, strict=True)]

    @torch.no_grad()
    def residuals(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                  scales: list[float]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The summed, scaled residuals for latents (B, C, F, h, w) and their (B·F, T, D) conditioning rows."""
        batch, frames = sample.shape[0], sample.shape[2]
        if any(len(video) != frames for video in self.videos):
            raise ValueError(f"control videos have {[len(v) for v in self.videos]} frames; the latents {frames}")
        latents = sample.transpose(1, 2).flatten(0, 1)  # (B·F, C, h, w), batch-major like the conditioning rows
        dtype = self.nets.nets[0].dtype
        down, mid = self.nets(latents.to(dtype), timestep, encoder_hidden_states=encoder_hidden_states.to(dtype),
                              controlnet_cond=[video.repeat(batch, 1, 1, 1) for video in self.videos],
                              conditioning_scale=scales, return_dict=False)
        return tuple(r.to(sample.dtype) for r in down), mid.to(sample.dtype)


class ResidualSource(Protocol):
    """What adds residuals to the UNet's calls: ControlNets (`Control`) or a SparseCtrl net
    (magicme/control/sparse_net.py)."""

    def scales_at(self, step: int, steps: int) -> list[float]: ...

    def residuals(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                  scales: list[float]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]: ...


@contextlib.contextmanager
def residual_unet(unet: torch.nn.Module, source: ResidualSource | None,
                  loop_length: Callable[[], int]) -> Iterator[None]:
    """Inside the block, the k-th UNet call (step k of the loop, one call per timestep as in diffusers' AnimateDiff
    pipelines) gets `source`'s residuals at step k, added to any residuals the caller already passes (an outer
    wrapper's: diffusers' MultiControlNet sums nets the same way); all its scales 0 at step k: the call is
    untouched. None: nothing changes. `loop_length()` is the number of timesteps the loop runs, read at the first
    call (the pipeline has set its scheduler's timesteps by then)."""
    if source is None:
        yield
        return
    own = unet.__dict__.get("forward")  # an instance-level forward of an inner wrapper (context windows)
    forward = unet.forward
    signature = inspect.signature(type(unet).forward)
    calls = itertools.count()
    steps = 0

    def with_residuals(*args, **kwargs):
        nonlocal steps
        step = next(calls)
        steps = steps or loop_length()
        if step >= steps:
            raise RuntimeError(f"{type(source).__name__}: UNet call {step + 1} in a loop of {steps} steps")
        scales = source.scales_at(step, steps)
        if not any(scales):
            return forward(*args, **kwargs)
        arguments = call_arguments(signature, unet, args, kwargs)
        down, mid = source.residuals(arguments["sample"], arguments["timestep"], arguments["encoder_hidden_states"],
                                     scales)
        given_down = arguments.pop("down_block_additional_residuals", None)
        given_mid = arguments.pop("mid_block_additional_residual", None)
        if given_down is not None:
            down = tuple(a + b for a, b in zip(given_down, down, strict=True))
        if given_mid is not None:
            mid = given_mid + mid
        return forward(**arguments, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    unet.forward = with_residuals
    try:
        yield
    finally:
        if own is None:
            del unet.forward
        else:
            unet.forward = own
