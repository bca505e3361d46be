import math

import pytest
import torch
from diffusers import DDIMScheduler

from magicme.noise_prior import frame_covariance, noise_latents, sample_noise_prior


def test_covariance_is_the_kms_matrix():
    cov = frame_covariance(4, 0.5)
    expected = torch.tensor([[1, .5, .25, .125], [.5, 1, .5, .25], [.25, .5, 1, .5], [.125, .25, .5, 1]],
                            dtype=torch.float64)
    assert torch.equal(cov, expected)
    assert torch.equal(frame_covariance(3, 0.0), torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("gamma", [0.1, 0.5, 0.9])
def test_empirical_covariance_matches_formula(gamma):
    frames = 6
    noise = sample_noise_prior((2, 4, frames, 64, 64), gamma, torch.Generator().manual_seed(0))
    x = noise.permute(0, 1, 3, 4, 2).reshape(-1, frames).double()  # 32768 draws of a frame vector
    empirical = x.T @ x / x.shape[0]
    # standard error of a covariance estimate is about 1/sqrt(n) = 0.0055; 0.03 is > 5 sigma
    assert (empirical - frame_covariance(frames, gamma)).abs().max() < 0.03
    assert x.mean().abs() < 0.02


def test_gamma_zero_is_plain_iid_noise_and_seed_fixes_the_draw():
    shape = (1, 4, 5, 8, 8)
    iid = sample_noise_prior(shape, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(iid, torch.randn(shape, generator=torch.Generator().manual_seed(3)))
    a = sample_noise_prior(shape, 0.3, torch.Generator().manual_seed(3))
    b = sample_noise_prior(shape, 0.3, torch.Generator().manual_seed(3))
    c = sample_noise_prior(shape, 0.3, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_recursion_is_exact_ar1():
    """x_m = γ x_{m-1} + sqrt(1-γ²) e_m with the same e as i.i.d. draws from the same seed."""
    shape, gamma = (1, 1, 4, 2, 2), 0.6
    e = torch.randn(shape, generator=torch.Generator().manual_seed(9))
    x = sample_noise_prior(shape, gamma, torch.Generator().manual_seed(9))
    assert torch.allclose(x[:, :, 0], e[:, :, 0])
    for m in range(1, 4):
        assert torch.allclose(x[:, :, m], gamma * x[:, :, m - 1] + math.sqrt(1 - gamma**2) * e[:, :, m])


@pytest.mark.parametrize("gamma", [-0.1, 1.0, 1.5])
def test_gamma_out_of_range_is_rejected(gamma):
    with pytest.raises(ValueError, match="gamma"):
        sample_noise_prior((1, 1, 2, 1, 1), gamma, None)


def test_noise_latents_is_the_forward_process():
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012)
    latents = torch.randn(2, 4, 3, 4, 4)
    noise = torch.randn(2, 4, 3, 4, 4)
    t = torch.tensor(500)
    a = scheduler.alphas_cumprod[500]
    expected = a.sqrt() * latents + (1 - a).sqrt() * noise
    assert torch.allclose(noise_latents(latents, noise, scheduler, t), expected, atol=1e-6)
