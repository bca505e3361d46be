"""Make diffusers' `UNetMotionModel` compute what the original AnimateDiff code computes.

Every released motion module (v1 `mm_sd_v15.ckpt`, v2 `mm_sd_v15_v2.ckpt`, v3 `v3_sd15_mm.ckpt`) was trained with
the original code (guoyww/AnimateDiff), and Magic-Me sampled with it. diffusers' port runs the same weights through the
same layers, but normalises two groups of tensors over different axes. A video tensor there is (B, C, F, H, W);
diffusers keeps it as (B·F, C, H, W) between layers.

1. **Motion-module input norm (all versions).** The original `TemporalTransformer3DModel` flattens to (B·F, C, H, W)
   before its GroupNorm, so every frame gets its own statistics. diffusers' `AnimateDiffTransformer3D` permutes to
   (B, C, F, H, W) first, so its GroupNorm pools over all frames. Fix: `FramewiseGroupNorm`, a GroupNorm that
   normalises each frame of a (B, C, F, H, W) input separately.
2. **UNet GroupNorms for v1 only.** v1 was trained with `use_inflated_groupnorm: false`: `norm1`/`norm2` of every
   resnet and `conv_norm_out` are a plain `nn.GroupNorm` applied to the (B, C, F, H, W) tensor, so their statistics
   pool over all frames of one video. v2 and v3 use the "inflated" (per-frame) GroupNorm, which is what diffusers
   does. Fix for v1: `FramePooledGroupNorm`, which regroups (B·F, C, H, W) into (B, C, F, H, W) before normalising.
   Those norms only see (B·F, C, H, W), so they need F: a forward pre-hook on the UNet records `sample.shape[2]` for
   the duration of each forward call and a forward hook (run even when the forward raises) clears it again, so a
   stale count can never be used. Each video of a batch keeps its own statistics (CFG's doubled batch is safe).
   Gradient checkpointing of the UNet is not supported in v1 "original" mode: its backward recomputation runs after
   the forward call ended, and the norm then raises instead of guessing F.

Measured on tiny random-weight float64 UNets (`scripts/measure_parity.py`), stock diffusers' noise prediction is off
from the original by about 0.27 relative error for v1 and 0.17 for v2/v3; with these replacements the gap is float64
rounding (~2e-15). See docs/animatediff-parity.md.

The replacements change only the class of existing `nn.GroupNorm` modules (same weight/bias tensors, same state-dict
keys, same device/dtype behaviour, any hooks kept), so `mode="diffusers"` can switch straight back and applying
twice is harmless.
"""

from __future__ import annotations

import torch
from torch import nn
from diffusers import UNetMotionModel
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from magicme.errors import ConfigError

MOTION_VERSIONS = ("v1", "v2", "v3")
MODES = ("original", "diffusers")
_POOLED_NORM_VERSIONS = ("v1",)  # original config `use_inflated_groupnorm: false`
_HOOKS_ATTR = "_magicme_frame_count_hooks"


class FramewiseGroupNorm(nn.GroupNorm):
    """GroupNorm of a (B, C, F, H, W) tensor with separate statistics for every frame (AnimateDiff's
    `InflatedGroupNorm`, and the original motion module's input norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        return super().forward(frames).reshape(b, f, c, h, w).transpose(1, 2)


class FrameCount:
    """The frame count of the `UNetMotionModel.forward` call in progress (None outside a UNet call).

    Its hooks are methods rather than closures so that `copy.deepcopy` of the UNet copies hooks and norms onto the
    same new `FrameCount`."""

    def __init__(self) -> None:
        self.frames: int | None = None

    def record(self, block: nn.Module, args: tuple, kwargs: dict) -> None:
        """Read from the first down block's `num_frames`, not from the UNet's input: a forward over context windows
        (magicme/context.py) runs the UNet's forward once per window, inside one call of the UNet."""
        self.frames = int(kwargs["num_frames"])

    def clear(self, unet: nn.Module, args: tuple, output: object) -> None:
        self.frames = None


class FramePooledGroupNorm(nn.GroupNorm):
    """GroupNorm of a (B·F, C, H, W) tensor whose statistics pool over the F frames of each video, as a plain
    GroupNorm on (B, C, F, H, W) does (AnimateDiff v1's resnets and `conv_norm_out`)."""

    frame_count: FrameCount

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.frame_count.frames
        if f is None:
            raise RuntimeError(
                "FramePooledGroupNorm needs the frame count, which UNetMotionModel.forward records: it cannot run "
                "outside a UNet forward call (e.g. gradient-checkpoint recomputation); use "
                "model.animatediff_numerics: diffusers for that."
            )
        bf, c, h, w = x.shape
        if bf % f:
            raise RuntimeError(f"FramePooledGroupNorm: batch·frames {bf} is not a multiple of the {f} frames")
        video = x.reshape(bf // f, f, c, h, w).transpose(1, 2)
        return super().forward(video).transpose(1, 2).reshape(bf, c, h, w)


def _set_class(norm: nn.GroupNorm, cls: type[nn.GroupNorm], frame_count: FrameCount | None = None) -> None:
    """Turn `norm` into a `cls` in place: parameters, buffers and hooks stay the same objects."""
    norm.__class__ = cls
    if frame_count is None:
        norm.__dict__.pop("frame_count", None)
    else:
        norm.frame_count = frame_count


def _resnet_and_output_norms(unet: UNetMotionModel) -> list[nn.GroupNorm]:
    norms = [n for m in unet.modules() if isinstance(m, ResnetBlock2D) for n in (m.norm1, m.norm2)]
    if unet.conv_norm_out is not None:
        norms.append(unet.conv_norm_out)
    return norms


def apply_animatediff_numerics(unet: UNetMotionModel, motion_version: str, mode: str = "original") -> None:
    """Set `unet`'s GroupNorms to compute as the original AnimateDiff did for `motion_version` ("original"), or
    restore stock diffusers behaviour ("diffusers"). Idempotent; a later call replaces an earlier one."""
    if motion_version not in MOTION_VERSIONS:
        raise ConfigError(f"motion module version: {motion_version!r} is not one of {', '.join(MOTION_VERSIONS)}")
    if mode not in MODES:
        raise ConfigError(f"model.animatediff_numerics: {mode!r} is not one of {', '.join(MODES)}")
    original = mode == "original"

    for handle in getattr(unet, _HOOKS_ATTR, ()):
        handle.remove()
    unet.__dict__.pop(_HOOKS_ATTR, None)

    for module in unet.modules():
        if isinstance(module, AnimateDiffTransformer3D):
            _set_class(module.norm, FramewiseGroupNorm if original else nn.GroupNorm)

    pooled = original and motion_version in _POOLED_NORM_VERSIONS
    frame_count = FrameCount() if pooled else None
    for norm in _resnet_and_output_norms(unet):
        _set_class(norm, FramePooledGroupNorm if pooled else nn.GroupNorm, frame_count)
    if frame_count is not None:
        setattr(unet, _HOOKS_ATTR, (
            unet.down_blocks[0].register_forward_pre_hook(frame_count.record, with_kwargs=True),
            unet.register_forward_hook(frame_count.clear, always_call=True),
        ))
