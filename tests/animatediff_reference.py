"""The original AnimateDiff math, written out independently, and a tiny random-weight UNetMotionModel to run it on.

Used by tests/test_parity.py and scripts/measure_parity.py. The reference reads only weights from the diffusers
modules; every operation (GroupNorm, LayerNorm, attention, GEGLU, the position table) is written here from the
original's definition, with the original's constants (8 heads, GroupNorm eps 1e-6 in the motion module, LayerNorm
eps 1e-5), so a wrong layout or constant in diffusers or in magicme.parity shows up as a mismatch.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

HEADS = 8
MOTION_GROUPS, MOTION_GN_EPS, LAYER_NORM_EPS = 32, 1e-6, 1e-5
UNET_GROUPS, UNET_GN_EPS = 32, 1e-5
CROSS_DIM = 32
# The v1/v2/v3 motion-module layouts: (max sequence length, motion module in the mid block).
LAYOUTS = {"v1": (24, False), "v2": (32, True), "v3": (32, False)}


def tiny_unet(version: str, seed: int = 0) -> UNetMotionModel:
    """A float64 UNetMotionModel with `version`'s motion-module layout; every parameter drawn from `seed`."""
    max_len, mid = LAYOUTS[version]
    unet2d = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=CROSS_DIM,
        norm_num_groups=UNET_GROUPS, norm_eps=UNET_GN_EPS, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    adapter = MotionAdapter(
        block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=HEADS,
        motion_norm_num_groups=MOTION_GROUPS, motion_max_seq_length=max_len, use_motion_mid_block=mid,
    )
    return randomized(UNetMotionModel.from_unet2d(unet2d, adapter), seed)


def tiny_sdxl_unet(seed: int = 0) -> UNetMotionModel:
    """A float64 UNetMotionModel of the tiny SD-XL bundle's shapes (three levels, text_time added conditioning, the
    SDXL motion module's layout); every parameter drawn from `seed`."""
    from magicme.tiny.sdxl import tiny_sdxl_motion_adapter, tiny_sdxl_unet as tiny_sdxl_unet2d

    return randomized(UNetMotionModel.from_unet2d(tiny_sdxl_unet2d(), tiny_sdxl_motion_adapter()), seed)


def randomized(unet: UNetMotionModel, seed: int) -> UNetMotionModel:
    """`unet` in float64 with every parameter drawn from `seed` (zero-initialised layers would hide mismatches)."""
    unet = unet.to(torch.float64).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            if p.dim() > 1:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):  # norm scales around 1
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)
    return unet


def tiny_inputs(batch: int, frames: int, seed: int = 1) -> dict:
    """UNetMotionModel.forward's inputs: sample (B, 4, F, 8, 8), per-frame text states (B·F, 5, 32), timestep."""
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, frames, 8, 8, generator=generator, dtype=torch.float64)
    text = torch.randn(batch, 5, CROSS_DIM, generator=generator, dtype=torch.float64)
    return {"sample": sample, "timestep": torch.tensor(417),
            "encoder_hidden_states": text.repeat_interleave(frames, dim=0)}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return float((a - b).norm() / b.norm())


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm of x (N, C, ...): statistics over each group's channels and all trailing axes of one sample."""
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + eps)
    shape = (1, c) + (1,) * (x.dim() - 2)
    return g.reshape(x.shape) * weight.reshape(shape) + bias.reshape(shape)


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + LAYER_NORM_EPS) * norm.weight + norm.bias


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def position_table(frames: int, dim: int) -> torch.Tensor:
    """The original `PositionalEncoding`: pe[pos, 0::2] = sin(pos·div), pe[pos, 1::2] = cos(pos·div),
    div = exp(arange(0, dim, 2)·(−ln 10000 / dim)). The original builds it in float32 when the model is created,
    so a float64 model carries the float32-rounded table; so does this one."""
    pos = torch.arange(frames, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(frames, dim)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return pe.to(torch.float64)


def temporal_self_attention(x: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """Multi-head self-attention over the frame axis of x (N, F, D), HEADS heads, no mask."""
    n, f, d = x.shape
    q, k, v = (linear(x, layer).reshape(n, f, HEADS, d // HEADS).transpose(1, 2)
               for layer in (attn.to_q, attn.to_k, attn.to_v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // HEADS), dim=-1)
    return linear((weights @ v).transpose(1, 2).reshape(n, f, d), attn.to_out[0])


def geglu_feed_forward(x: torch.Tensor, ff: nn.Module) -> torch.Tensor:
    hidden, gate = linear(x, ff.net[0].proj).chunk(2, dim=-1)
    gelu = 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2)))
    return linear(hidden * gelu, ff.net[2])


def reference_motion_module(m: AnimateDiffTransformer3D, x: torch.Tensor, frames: int,
                            pooled_norm: bool = False) -> torch.Tensor:
    """The original `TemporalTransformer3DModel` on x (B·F, C, H, W) with `m`'s weights: GroupNorm → proj_in →
    per layer [2 × (LayerNorm → + positions → temporal self-attention → residual), LayerNorm → GEGLU feed-forward →
    residual] → proj_out → residual. The SD1.5 code's GroupNorm sees single frames; the SD-XL branch's
    (`pooled_norm`) sees the (B, C, F, H, W) video, so its statistics pool over the frames."""
    bf, c, h, w = x.shape
    b = bf // frames
    if pooled_norm:
        video = x.reshape(b, frames, c, h, w).transpose(1, 2)
        hs = group_norm(video, MOTION_GROUPS, m.norm.weight, m.norm.bias, MOTION_GN_EPS).transpose(1, 2)
        hs = hs.reshape(bf, c, h, w)
    else:
        hs = group_norm(x, MOTION_GROUPS, m.norm.weight, m.norm.bias, MOTION_GN_EPS)  # x rows are single frames
    hs = linear(hs.reshape(b, frames, c, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, frames, c), m.proj_in)
    pe = position_table(frames, hs.shape[-1])
    for block in m.transformer_blocks:
        for norm, attn in ((block.norm1, block.attn1), (block.norm2, block.attn2)):
            hs = temporal_self_attention(layer_norm(hs, norm) + pe, attn) + hs
        hs = geglu_feed_forward(layer_norm(hs, block.norm3), block.ff) + hs
    hs = linear(hs, m.proj_out).reshape(b, h, w, frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
    return hs + x


class ReferenceMotionModule(nn.Module):
    """Stands in for an AnimateDiffTransformer3D inside the reference UNet (same call signature)."""

    def __init__(self, module: AnimateDiffTransformer3D, pooled_norm: bool):
        super().__init__()
        self.module, self.pooled_norm = module, pooled_norm

    def forward(self, hidden_states, encoder_hidden_states=None, timestep=None, class_labels=None, num_frames=1,
                cross_attention_kwargs=None):
        return reference_motion_module(self.module, hidden_states, num_frames, self.pooled_norm)


class ReferenceGroupNorm(nn.Module):
    """Stands in for a resnet / output GroupNorm that sees (B·F, C, H, W): statistics per frame, or pooled over the
    `frames` frames of each video (a GroupNorm on (B, C, F, H, W), as the original v1 UNet)."""

    def __init__(self, norm: nn.GroupNorm, frames: int, pooled: bool):
        super().__init__()
        self.norm, self.frames, self.pooled = norm, frames, pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.norm.weight, self.norm.bias
        if not self.pooled:
            return group_norm(x, UNET_GROUPS, w, b, UNET_GN_EPS)
        bf, c, h, wd = x.shape
        video = x.reshape(bf // self.frames, self.frames, c, h, wd).transpose(1, 2)
        return group_norm(video, UNET_GROUPS, w, b, UNET_GN_EPS).transpose(1, 2).reshape(bf, c, h, wd)


def reference_unet(unet: UNetMotionModel, frames: int, pooled_norms: bool,
                   pooled_motion_norm: bool = False) -> UNetMotionModel:
    """A copy of stock `unet` that runs the original math: every motion module replaced by the reference one (its
    GroupNorm pooled over frames when `pooled_motion_norm`, as the SD-XL branch), every resnet norm and
    `conv_norm_out` by the reference GroupNorm (pooled over frames when `pooled_norms`, as v1). The rest
    (convolutions, spatial attention, time and added embeddings) is diffusers', which matches the original's 2D
    part."""
    ref = copy.deepcopy(unet)
    for parent in list(ref.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, AnimateDiffTransformer3D):
                setattr(parent, name, ReferenceMotionModule(child, pooled_motion_norm))
        if isinstance(parent, ResnetBlock2D):
            parent.norm1 = ReferenceGroupNorm(parent.norm1, frames, pooled_norms)
            parent.norm2 = ReferenceGroupNorm(parent.norm2, frames, pooled_norms)
    ref.conv_norm_out = ReferenceGroupNorm(ref.conv_norm_out, frames, pooled_norms)
    return ref
