"""Contrast-adaptive sharpening (AMD FidelityFX CAS), as the ComfyUI node `ImageCASharpening+` the Magic-Me graph
runs after its tiled upscale (amount 0.2).

Per pixel and channel: from the 3×3 neighbourhood (zero outside the image), `amp` = √(min(mn, 2 − mx) / mx) with
mn, mx the cross's min/max plus the diagonal's min/max — large in flat areas, small at strong edges — and the
negative lobe w = −amp · (1/8 + amount · (1/5 − 1/8)); the output is (w · (N + S + E + W) + centre) / (1 + 4w),
clipped to [0, 1]. Sharpening adapts to local contrast, so edges do not ring.
"""

import numpy as np
import torch

EPSILON = 1e-5  # keeps a black neighbourhood (mx = 0) finite


def cas_sharpen(video: np.ndarray, amount: float, device="cpu") -> np.ndarray:
    """Sharpen a (F, H, W, 3) [0, 1] video; amount 0 is the mildest sharpening CAS does, so 0 here means off."""
    if amount == 0:
        return video
    x = torch.nn.functional.pad(torch.from_numpy(video).to(device).permute(0, 3, 1, 2), (1, 1, 1, 1))
    a, b, c = x[..., :-2, :-2], x[..., :-2, 1:-1], x[..., :-2, 2:]
    d, e, f = x[..., 1:-1, :-2], x[..., 1:-1, 1:-1], x[..., 1:-1, 2:]
    g, h, i = x[..., 2:, :-2], x[..., 2:, 1:-1], x[..., 2:, 2:]
    cross, diagonal = torch.stack([b, d, e, f, h]), torch.stack([a, c, g, i])
    mn = cross.amin(0) + diagonal.amin(0)
    mx = cross.amax(0) + diagonal.amax(0)
    amp = torch.sqrt(torch.minimum(mn, 2 - mx) / (mx + EPSILON))
    w = -amp * (amount * (1 / 5 - 1 / 8) + 1 / 8)
    out = ((b + d + f + h) * w + e) / (1 + 4 * w)
    return out.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
