"""FreeU (Si et al. 2023) as ComfyUI's `FreeU` (version 1) and `FreeU_V2` (version 2) nodes compute it.

At every skip connection of the UNet's decoder, where the backbone features `h` have 4× (or 2×) the model's base
channels, FreeU re-weights the two inputs of the concatenation:
- backbone: the first half of `h`'s channels is multiplied by `b` (v1), or by `1 + (b − 1)·m` (v2), where `m` is
  the channel-mean map of that image min-max normalised to [0, 1] (so the boost follows the image's structure);
- skip: the low frequencies of the skip features (a 2×2 square at the centre of the shifted 2D spectrum) are
  scaled by `s`.
Magic-Me's ComfyUI graph patched every sampler's model with FreeU_V2 (b1 1.1, b2 1.2, s1 0.9, s2 0.4).

Which features count is decided by channel count, as in ComfyUI (and the FreeU authors' code), not by up-block
index as in diffusers' `enable_freeu`: in SD1.5 the 1280-channel `h` reaches into the third up block. The
UNet's 2D layers see a video as a batch of frames, so `m` is normalised per frame, as in ComfyUI.
"""

import torch
from torch import nn


def fourier_filter(x: torch.Tensor, scale: float, threshold: int = 1) -> torch.Tensor:
    """`x` (N, C, H, W) with the centred (2·threshold)² low-frequency square of its spectrum scaled by `scale`,
    computed in float32 and returned in `x`'s dtype."""
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    rows, cols = x.shape[-2] // 2, x.shape[-1] // 2
    gain = torch.ones(x.shape[-2:], device=x.device)
    gain[max(0, rows - threshold):rows + threshold, max(0, cols - threshold):cols + threshold] = scale
    spectrum = torch.fft.ifftshift(spectrum * gain, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(x.dtype)


def backbone_factor(h: torch.Tensor, b: float, version: int) -> torch.Tensor | float:
    """The factor FreeU multiplies the first half of `h`'s channels by: `b` (v1), or per pixel
    `1 + (b − 1)·m` (v2) with `m` = each image's channel-mean map scaled to [0, 1]."""
    if version == 1:
        return b
    mean = h.mean(1, keepdim=True)
    flat = mean.flatten(1)
    low = flat.min(dim=1).values[:, None, None, None]
    high = flat.max(dim=1).values[:, None, None, None]
    return (b - 1) * ((mean - low) / (high - low)) + 1


def freeu(h: torch.Tensor, skip: torch.Tensor, b: float, s: float, version: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two inputs of one decoder concatenation after FreeU. b = 1 leaves `h` and s = 1 leaves `skip` untouched
    (exactly: the no-op arithmetic is skipped, so FreeU at b = s = 1 is bit-identical to no FreeU)."""
    if b != 1:
        half = h.shape[1] // 2
        h = torch.cat([h[:, :half] * backbone_factor(h, b, version), h[:, half:]], dim=1)
    if s != 1:
        skip = fourier_filter(skip, s)
    return h, skip


def install_freeu(unet: nn.Module, version: int, b1: float, b2: float, s1: float, s2: float) -> list:
    """Patch a diffusers UNet (2D or motion) in place; returns the hook handles (`handle.remove()` undoes it).

    Each decoder resnet receives `cat([h, skip])`: a pre-hook on the up block records the channel counts of its
    skip tensors, and a pre-hook on each resnet splits its input there, applies `freeu` and concatenates again.
    """
    base = unet.config.block_out_channels[0]
    scales = {4 * base: (b1, s1), 2 * base: (b2, s2)}
    handles = []
    for block in unet.up_blocks:
        skips: list[int] = []

        def record(module, args, kwargs, skips=skips):
            skips[:] = [t.shape[1] for t in kwargs["res_hidden_states_tuple"]]

        handles.append(block.register_forward_pre_hook(record, with_kwargs=True))
        for i, resnet in enumerate(block.resnets):
            def patch(module, args, kwargs, skips=skips, i=i):
                # motion UNets pass `input_tensor=`, 2D UNets pass it first
                x = kwargs["input_tensor"] if "input_tensor" in kwargs else args[0]
                skip_channels = skips[len(skips) - 1 - i]
                h, skip = x[:, :-skip_channels], x[:, -skip_channels:]
                if h.shape[1] not in scales:
                    return None
                x = torch.cat(freeu(h, skip, *scales[h.shape[1]], version), dim=1)
                if "input_tensor" in kwargs:
                    return args, {**kwargs, "input_tensor": x}
                return (x, *args[1:]), kwargs

            handles.append(resnet.register_forward_pre_hook(patch, with_kwargs=True))
    return handles
