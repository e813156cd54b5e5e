"""The consistency models' sampler (Song et al. 2023, Alg. 1) and its one-step case, on the oracle."""

from __future__ import annotations

import math

import pytest
import torch

from skiptune.experiment import SamplingSpec
from skiptune.sampling import GaussianMixture, SeedNoise, sample

MIX = GaussianMixture([0.6, 0.4], [[-1.0, 0.5], [1.0, -0.5]], [0.4, 0.6])


def test_one_step_is_the_denoiser_at_sigma_max():
    x = SeedNoise(range(4), dtype=torch.float64).randn([2]) * 80.0
    spec = SamplingSpec("consistency", nfe=1)
    sig = spec.sigmas()
    assert sig.tolist() == [80.0, 0.0]
    torch.testing.assert_close(sample("consistency", MIX, x, sig), MIX(x, 80.0), rtol=0, atol=0)


def test_multistep_renoises_with_each_seeds_noise():
    seeds = [3, 5, 8]
    x = SeedNoise(seeds, dtype=torch.float64).randn([2]) * 80.0
    sig = torch.tensor([80.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    out = sample("consistency", MIX, x, sig, noise=SeedNoise(seeds))
    # Alg. 1 written out: the same per-seed noise stream, drawn once per re-noising
    noise = SeedNoise(seeds)
    y = MIX(x, 80.0)
    for t in (2.0, 0.5):
        y = MIX(y + math.sqrt(t * t - 0.002**2) * noise.randn_like(y), t)
    torch.testing.assert_close(out, y, rtol=0, atol=1e-12)
    # sample i depends only on seed i
    alone = sample("consistency", MIX, x[1:2], sig, noise=SeedNoise([5]))
    torch.testing.assert_close(out[1:2], alone, rtol=0, atol=1e-12)


def test_bad_eps_is_refused():
    x = torch.zeros(1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="eps must lie in"):
        sample("consistency", MIX, x, torch.tensor([80.0, 1.0, 0.0], dtype=torch.float64), eps=2.0)
