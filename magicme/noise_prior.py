"""The 3D Gaussian noise prior of Magic-Me (arXiv 2402.09368, Eq. 4).

Initial video latents are drawn with frames correlated as Σ[m, n] = γ^|m−n| (a Kac–Murdock–Szegő matrix) at
every (channel, h, w) position; each frame keeps unit variance. Training latents come from real videos whose frames
are correlated, so correlated inference noise reduces exposure bias; γ = 0 gives the usual i.i.d. noise.

Σ(γ) is exactly the covariance of a stationary AR(1) process, so we sample it exactly in O(frames):
x_0 = e_0 and x_m = γ·x_{m−1} + sqrt(1 − γ²)·e_m with i.i.d. standard normal e.
"""

import math

import torch


def frame_covariance(frames: int, gamma: float) -> torch.Tensor:
    """Σ[m, n] = γ^|m−n| as a float64 (frames × frames) matrix; the formula the sampler must reproduce."""
    check_gamma(gamma)
    idx = torch.arange(frames, dtype=torch.float64)
    lag = (idx[:, None] - idx[None, :]).abs()
    return torch.where(lag == 0, torch.ones_like(lag), torch.tensor(gamma, dtype=torch.float64) ** lag)


def check_gamma(gamma: float) -> None:
    """γ must be in [0, 1): at 1 every frame is the same draw and the AR(1) innovation vanishes."""
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")


def sample_noise_prior(
    shape: tuple[int, ...],
    gamma: float,
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw noise of `shape` = (batch, channels, frames, h, w) with Cov over frames Σ(γ).

    The draw happens on the generator's device in float32 (so a CPU generator gives the same numbers whatever
    `device` is), then moves to `device`/`dtype`.
    """
    check_gamma(gamma)
    if len(shape) != 5:
        raise ValueError(f"expected (batch, channels, frames, h, w), got shape {tuple(shape)}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    e = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
    x = torch.empty_like(e)
    x[:, :, 0] = e[:, :, 0]
    innovation = math.sqrt(1.0 - gamma * gamma)
    for m in range(1, shape[2]):
        x[:, :, m] = gamma * x[:, :, m - 1] + innovation * e[:, :, m]
    return x.to(device=device if device is not None else gen_device, dtype=dtype)


def noise_latents(latents: torch.Tensor, noise: torch.Tensor, scheduler, timestep: torch.Tensor) -> torch.Tensor:
    """Partially noise clean video latents (B, C, F, h, w) to `timestep` with the scheduler's forward process.

    Used by video→video (Face/Tiled VCD, editing) with noise from `sample_noise_prior`, so partial noise keeps the
    same temporal correlation as full T2V noise. Schedulers broadcast per-sample coefficients over any trailing
    dimensions, so the 5-D layout needs no reshaping.
    """
    return scheduler.add_noise(latents, noise, timestep.reshape(1).repeat(latents.shape[0]))
