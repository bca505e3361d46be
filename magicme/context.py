"""Context windows: videos longer than the motion module was trained on (16/24/32 frames).

AnimateDiff's temporal attention only saw clips of a fixed length; run on many more frames it loses coherence. So at
every denoising step the UNet sees overlapping windows of `length` frames, and the noise predictions of the windows
that cover a frame are blended into one prediction for that frame. Overlaps make neighbouring windows agree, so the
video stays continuous across window boundaries (the "uniform context" of AnimateDiff-Evolved; diffusers' FreeNoise
blends the same way inside its transformer blocks).

Blending weights (`window_weights`): 1 in a window's middle, and a raised-cosine ramp of width `overlap` at each end,

    w(d) = ½·(1 − cos(π·(d + 1)/(overlap + 1)))   for d < overlap,    w(d) = 1 otherwise,

with d the distance of the frame to the window's nearest edge (0 at the edge). Why this ramp:
- only frames inside an overlap are blended; a frame covered by one window keeps that window's prediction exactly
  (w is never 0, and the fused value is Σ w·pred / Σ w);
- the falling ramp of one window and the rising ramp of the next window overlapping it by exactly `overlap` frames
  sum to 1 at every frame (cos(π − x) = −cos x): a smooth crossfade from one window to the next, without a kink;
- FreeNoise's "pyramid" (1, 2, …, L/2, …, 2, 1) depends on the window length only: deep inside a window its
  prediction is still pulled towards a neighbour's edge frames, where that neighbour is least reliable.

`windowed_unet` makes a diffusers AnimateDiff pipeline use the windows without a fork of its denoising loop: it
replaces `unet.forward` for the duration of a `with` block.
"""

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from diffusers.models.unets.unet_motion_model import UNetMotionOutput


PER_FRAME_KWARGS = ("down_block_additional_residuals", "mid_block_additional_residual")  # ControlNet residuals


@dataclass(frozen=True)
class ContextSettings:
    """`context: {length, overlap, closed_loop}` of a run: window length in frames (the motion module's training
    length, e.g. 16), frames shared by consecutive windows, and whether the video loops (last frames → first)."""

    length: int
    overlap: int
    closed_loop: bool = False

    def __post_init__(self) -> None:
        check_window(self.length, self.overlap)


def check_window(length: int, overlap: int) -> None:
    """A window has at least one frame and advances by at least one frame (overlap < length)."""
    if length < 1:
        raise ValueError(f"context length must be at least 1 frame, got {length}")
    if not 0 <= overlap < length:
        raise ValueError(f"context overlap must be in [0, length) = [0, {length}), got {overlap}")


def context_windows(frames: int, length: int, overlap: int, closed_loop: bool = False) -> list[list[int]]:
    """Frame indices of each window, in the temporal order the motion module sees them.

    frames ≤ length: one window [0, …, frames−1] (the whole video fits the motion module). Otherwise the windows start
    at 0, stride, 2·stride, … (stride = length − overlap) until one reaches the last frame; that one is shifted back
    to end exactly at the last frame, so every window has `length` frames, every frame is covered and consecutive
    windows share at least `overlap` frames.

    closed_loop: the windows keep their stride and wrap around the end (indices mod frames) instead of being
    shifted: the last window runs from the last frames into the first ones, overlapping the first window by at least
    `overlap` frames, so the motion module makes the end flow into the start (a looping clip).
    """
    check_window(length, overlap)
    if frames < 1:
        raise ValueError(f"a video has at least 1 frame, got {frames}")
    if frames <= length:
        return [list(range(frames))]
    stride = length - overlap
    if closed_loop:
        count = math.ceil(frames / stride)  # count·stride ≥ frames: the last window reaches ≥ overlap frames past 0
        return [[(start + i) % frames for i in range(length)] for start in range(0, count * stride, stride)]
    starts = list(range(0, frames - length, stride)) + [frames - length]
    return [list(range(start, start + length)) for start in starts]


def window_weights(length: int, overlap: int) -> torch.Tensor:
    """(length,) float64 blending weights of a window's frames: 1 in the middle, a raised-cosine ramp over the
    `overlap` frames at each end (formula and reasons in the module docstring). Symmetric, never 0 (a frame covered
    by one window only keeps its prediction); overlap 0 gives all ones. When 2·overlap > length the two ramps meet
    and the middle frame is the highest, below 1."""
    check_window(length, overlap)
    position = torch.arange(length, dtype=torch.float64)
    edge_distance = torch.minimum(position, length - 1 - position)
    ramp = 0.5 * (1.0 - torch.cos(math.pi * (edge_distance + 1) / (overlap + 1)))
    return torch.where(edge_distance < overlap, ramp, torch.ones_like(ramp))


def fuse_windows(forward: Callable[..., torch.Tensor], sample: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 windows: Sequence[Sequence[int]], weights: torch.Tensor, **kwargs) -> torch.Tensor:
    """The UNet's output over the whole video, made of one forward per window.

    sample: latents (B, C, F, H, W) as diffusers' AnimateDiff pipelines give them to `UNetMotionModel`.
    encoder_hidden_states: (B·F, T, D), one row per (batch element, frame), batch-major (the pipeline's
    `prompt_embeds.repeat_interleave(F, dim=0)`); a window gets its frames' rows of each batch element, so per-frame
    conditioning (prompt travel) follows the frames. `forward(sample=…, encoder_hidden_states=…, **kwargs)` returns
    a (B, C', f, H, W) tensor for f frames. `weights[j]` weighs the j-th frame of every window.

    Returns (B, C', F, H, W): per frame Σ w·pred / Σ w over the windows that cover it, accumulated in place in one
    (B, C', F, H, W) buffer (float32 at least, so fp16 predictions are not summed in fp16), returned in the
    predictions' dtype. A single window of all frames in order calls `forward` once on the unsliced inputs and
    returns its result as is (bit-identical to no windowing).

    `kwargs` pass through unchanged to every window's forward: per-batch conditioning (timestep, added_cond_kwargs'
    image embeddings, cross_attention_kwargs) is right for every window; the per-frame ControlNet residuals
    (PER_FRAME_KWARGS, rows (B·F, …) batch-major like encoder_hidden_states) give each window its frames' rows.
    """
    if sample.ndim != 5:
        raise ValueError(f"expected latents (batch, channels, frames, h, w), got shape {tuple(sample.shape)}")
    batch, frames = sample.shape[0], sample.shape[2]
    if encoder_hidden_states.shape[0] != batch * frames:
        raise ValueError(f"encoder_hidden_states needs one row per (batch, frame) = {batch}·{frames} rows, got "
                         f"{encoder_hidden_states.shape[0]}")
    windows = [list(window) for window in windows]
    if len(windows) == 1 and windows[0] == list(range(frames)):
        return forward(sample=sample, encoder_hidden_states=encoder_hidden_states, **kwargs)

    weight_sum = frame_weight_sums(frames, windows, weights)
    rows = encoder_hidden_states.unflatten(0, (batch, frames))  # (B, F, T, D): a view, rows follow frames
    fused = None
    for window in windows:
        index = torch.tensor(window, device=sample.device)
        own = {k: frame_rows(v, batch, frames, index) for k, v in kwargs.items() if k in PER_FRAME_KWARGS}
        pred = forward(sample=sample[:, :, index], encoder_hidden_states=rows[:, index].flatten(0, 1),
                       **{**kwargs, **own})
        if fused is None:
            out_dtype = pred.dtype
            fused = pred.new_zeros((*pred.shape[:2], frames, *pred.shape[3:]),
                                   dtype=torch.promote_types(pred.dtype, torch.float32))
            frame_weights = weights.to(fused.device, fused.dtype).view(1, 1, -1, 1, 1)
        if pred.shape[2] != len(window):
            raise ValueError(f"forward returned {pred.shape[2]} frames for a window of {len(window)}")
        fused[:, :, index] += pred.to(fused.dtype) * frame_weights  # indices within a window are distinct
    fused /= weight_sum.to(fused.device, fused.dtype).view(1, 1, -1, 1, 1)
    return fused.to(out_dtype)


def frame_rows(value, batch: int, frames: int, index: torch.Tensor):
    """The rows of the frames `index` of a (B·F, …) batch-major tensor, or of each tensor of a tuple; None stays."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return type(value)(frame_rows(v, batch, frames, index) for v in value)
    return value.unflatten(0, (batch, frames))[:, index].flatten(0, 1)


def frame_weight_sums(frames: int, windows: list[list[int]], weights: torch.Tensor) -> torch.Tensor:
    """(frames,) Σ of the weights each frame gets from the windows; checks the windows before any forward runs."""
    weights = weights.detach().to("cpu", torch.float64)
    if weights.ndim != 1 or not bool((weights > 0).all()):
        raise ValueError(f"window weights must be a 1-D tensor of positive values, got {weights}")
    total = torch.zeros(frames, dtype=torch.float64)
    for window in windows:
        if len(window) != len(weights):
            raise ValueError(f"a window of {len(window)} frames needs {len(window)} weights, got {len(weights)}")
        if len(set(window)) != len(window) or not all(0 <= i < frames for i in window):
            raise ValueError(f"window {window} must hold distinct frame indices in [0, {frames})")
        total[window] += weights
    uncovered = (total == 0).nonzero().flatten().tolist()
    if uncovered:
        raise ValueError(f"frames {uncovered} are in no window")
    return total


@contextlib.contextmanager
def windowed_unet(unet: torch.nn.Module, settings: ContextSettings | None) -> Iterator[torch.nn.Module]:
    """Inside the block, the UNet's calls on more than `settings.length` frames go through `fuse_windows`.

    `unet.forward` is replaced by an instance attribute (what `nn.Module.__call__` calls), so a diffusers pipeline's
    unchanged loop — `unet(latents, t, encoder_hidden_states=…, cross_attention_kwargs=…, added_cond_kwargs=…)`,
    then `.sample`, or with `return_dict=False` then `[0]` — denoises with context windows. Arguments may be given
    positionally or by name, as the original forward accepts them. Calls on ≤ length frames, and everything when
    `settings` is None, reach the original forward untouched. On exit, also after an error, the UNet is as before
    (including a forward that was already an instance attribute, e.g. an accelerate offload hook).
    """
    if settings is None:
        yield unet
        return
    had_own_forward = "forward" in vars(unet)
    original = unet.forward
    # The class's signature names the arguments even when `original` is a hook taking (*args, **kwargs).
    signature = inspect.signature(type(unet).forward)
    weights = window_weights(settings.length, settings.overlap)

    def windowed_forward(*args, **kwargs):
        arguments = call_arguments(signature, unet, args, kwargs)
        sample = arguments.pop("sample")
        frames = sample.shape[2]
        if frames <= settings.length:
            return original(*args, **kwargs)
        return_dict = arguments.pop("return_dict", True)
        encoder_hidden_states = arguments.pop("encoder_hidden_states")
        windows = context_windows(frames, settings.length, settings.overlap, settings.closed_loop)
        fused = fuse_windows(lambda **kw: original(**kw, return_dict=False)[0], sample, encoder_hidden_states,
                             windows, weights, **arguments)
        if not return_dict:
            return (fused,)
        return UNetMotionOutput(sample=fused)

    unet.forward = windowed_forward
    try:
        yield unet
    finally:
        if had_own_forward:
            unet.forward = original
        else:
            del unet.forward


def call_arguments(signature: inspect.Signature, module: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """The arguments of a `module.forward(*args, **kwargs)` call by parameter name (without `self`)."""
    bound = signature.bind(module, *args, **kwargs)
    arguments = {}
    for name, value in list(bound.arguments.items())[1:]:
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError(f"{type(module).__name__}.forward: extra positional arguments are not supported")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        else:
            arguments[name] = value
    return arguments
