"""With many samples, the generated distribution matches the mixture (weights and means within 3 SE).

The starting points are exact samples of the noisy marginal p_{sigma_max} (not N(0, sigma_max^2 I),
whose mean differs by sum_k w_k mu_k and would bias the component weights by itself), so an exact
solver reproduces the mixture exactly and only the sampler is tested. The components are far apart
(mean distances >= 5, stds <= 0.7): assigning each sample to the component of highest posterior at
sigma = 0 misclassifies with probability < 1e-6. Standard errors: weight sqrt(w (1 - w) / n), mean
coordinate s_k / sqrt(n_k). Step counts are chosen so that each sampler's discretisation bias is
small against one standard error (measured against a 256-step UniPC run on 2e5 samples: <= 0.25 SE
for the ODE samplers at 64 steps and EDM-SDE at 64 steps; ancestral DDIM (eta = 1) is only weakly
first order and needs 512 steps for <= 0.85 SE).
"""

from __future__ import annotations

import math

import pytest
import torch

from skiptune.sampling import SAMPLERS, GaussianMixture, edm_sigmas

WEIGHTS = [0.5, 0.3, 0.2]
MEANS = [[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]]
STDS = [0.5, 0.7, 0.4]
MIX = GaussianMixture(WEIGHTS, MEANS, STDS)
N = 10000


pytestmark = pytest.mark.usefixtures("one_thread")


def check_mixture_statistics(samples: torch.Tensor) -> None:
    assert torch.isfinite(samples).all()
    comp = MIX.responsibilities(samples, 0.0).argmax(-1)
    n = samples.shape[0]
    for k, (w, mu, s) in enumerate(zip(WEIGHTS, MEANS, STDS, strict=True)):
        sel = samples[comp == k]
        frac = sel.shape[0] / n
        assert abs(frac - w) <= 3 * math.sqrt(w * (1 - w) / n), (k, frac, w)
        se = s / math.sqrt(sel.shape[0])
        for j in range(2):
            assert abs(float(sel[:, j].mean()) - mu[j]) <= 3 * se, (k, j, float(sel[:, j].mean()), mu[j])


@pytest.mark.parametrize(
    "name,steps,opts",
    [
        ("heun", 64, {}),
        ("dpmpp_2m", 64, {}),
        ("unipc", 64, {}),
        ("deis", 64, {}),
        ("edm_sde", 64, {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0}),
        ("ddim", 512, {"eta": 1.0}),
    ],
)
def test_component_weights_and_means(name, steps, opts):
    gen = torch.Generator().manual_seed(2024)
    sigmas = edm_sigmas(steps)
    x = MIX.sample(N, sigma=float(sigmas[0]), generator=gen)
    out = SAMPLERS[name](MIX, x, sigmas, noise=gen, **opts)
    check_mixture_statistics(out)


def test_oracle_exact_samples():
    check_mixture_statistics(MIX.sample(N, generator=torch.Generator().manual_seed(7)))
