"""The analytic Gaussian-mixture oracle against independent derivations."""

from __future__ import annotations

import math

import pytest
import torch

from skiptune.sampling import GaussianMixture, SeedNoise

pytestmark = pytest.mark.usefixtures("one_thread")


MIX = GaussianMixture([0.5, 0.3, 0.2], [[-1.5, 0.5], [1.0, 1.2], [0.8, -1.4]], [0.3, 0.5, 0.7])


def test_denoiser_is_tweedie():
    """D(x, sigma) = x + sigma^2 grad log p_sigma(x) (Tweedie), with the gradient by autograd."""
    x = (SeedNoise(range(7), dtype=torch.float64).randn([2]) * 2).requires_grad_(True)
    for sigma in (0.05, 0.7, 3.0):
        (grad,) = torch.autograd.grad(MIX.log_prob(x, sigma).sum(), x)
        assert torch.allclose(MIX(x.detach(), sigma), x.detach() + sigma**2 * grad, rtol=1e-12, atol=1e-12)


def test_log_prob_single_gaussian_closed_form():
    g = GaussianMixture.gaussian([1.0, -2.0, 0.5], 0.8)
    x = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
    var = 0.64 + 1.5**2
    expect = -0.5 * (1 + 4 + 0.25) / var - 1.5 * math.log(2 * math.pi * var)
    assert float(g.log_prob(x, 1.5)) == pytest.approx(expect, rel=1e-13)
    assert torch.allclose(g(x, 1.5), torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64) * 1.5**2 / var, rtol=1e-13)


def test_reference_integrator_matches_closed_form():
    """Two identical components force the numerical path; the flow is then the one-Gaussian closed form."""
    twin = GaussianMixture([0.5, 0.5], [[0.3, -0.2], [0.3, -0.2]], [0.6, 0.6])
    single = GaussianMixture.gaussian([0.3, -0.2], 0.6)
    x = SeedNoise(range(5), dtype=torch.float64).randn([2]) * 80
    exact = 0.3 + (x[:, 0] - 0.3) * math.sqrt(0.36 + 0.002**2) / math.sqrt(0.36 + 80**2)
    assert torch.allclose(single.ode_solve(x, 80.0, 0.002)[:, 0], exact, rtol=1e-14, atol=1e-14)
    assert torch.allclose(twin.ode_solve(x, 80.0, 0.002), single.ode_solve(x, 80.0, 0.002), rtol=0, atol=1e-11)


def test_sample_moments():
    n = 40000
    y = MIX.sample(n, generator=torch.Generator().manual_seed(3))
    mean = (MIX.weights[:, None] * MIX.means).sum(0)
    # Cov = sum_k w_k (s_k^2 I + mu_k mu_k^T) - mean mean^T, so each coordinate's variance is
    var = (MIX.weights[:, None] * (MIX.stds[:, None] ** 2 + MIX.means**2)).sum(0) - mean**2
    se = (var / n).sqrt()
    assert ((y.mean(0) - mean).abs() <= 3 * se).all()
    noisy = MIX.sample(n, sigma=2.0, generator=torch.Generator().manual_seed(4))
    assert ((noisy.var(0) - (var + 4.0)).abs() <= 3 * (var + 4.0) * math.sqrt(2 / n) * 1.5).all()


def test_per_seed_sampling():
    a = MIX.sample(SeedNoise([3, 4, 5]))
    b = MIX.sample(SeedNoise([4]))
    assert torch.equal(a[1], b[0])


def test_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture([0.5, 0.4], [[0.0], [1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="d = 2"):
        MIX(torch.zeros(1, 3), 1.0)
