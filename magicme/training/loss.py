"""The masked diffusion loss of Magic-Me: ε-prediction error counted only where the person is."""

import torch
import torch.nn.functional as F


def latent_mask(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) pixel mask in {0, 1} → (B, 1, h, w) binary mask at latent resolution (area average ≥ 0.5)."""
    pooled = F.adaptive_avg_pool2d(mask[:, None].float(), latent_size)
    return (pooled >= 0.5).float()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """loss_i = Σ_{c,h,w} M·(ε̂ − ε)² / Σ_{h,w} M, averaged over the batch (the original's formula, per sample).

    `mask` is (B, 1, h, w); pixels outside it contribute nothing, so they get no gradient.
    """
    squared = (pred.float() - target.float()) ** 2 * mask
    return (squared.sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp(min=1.0)).mean()
