"""ODE inversion (data -> noise) with the deterministic solvers, run on increasing grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skiptune.sampling import SAMPLERS, GaussianMixture, SeedNoise, edm_sigmas, inversion_sigmas, invert

MIX = GaussianMixture([0.5, 0.3, 0.2], [[-1.5, 0.5], [1.0, 1.2], [0.8, -1.4]], [0.3, 0.5, 0.7])
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return MIX.sample(SeedNoise(range(12), dtype=torch.float64))


SOLVERS = [
    ("euler", {}, 1),
    ("heun", {}, 2),
    ("ddim", {}, 1),
    ("dpmpp_2m", {}, 2),
    ("dpmpp_3m", {}, 2),  # the published weights: second order
    ("dpmpp_3m_order3", {}, 3),
    ("unipc", {"lower_order_final": False}, 4),
    ("deis", {"order": 3, "time": "sigma"}, 3),
    ("ipndm", {}, 2),
]


@pytest.mark.parametrize("name,opts,order", SOLVERS, ids=[s[0] for s in SOLVERS])
def test_inversion_matches_exact_flow(name, opts, order, data):
    """The inverted latent converges to the exact ODE solution x(sigma_max) at the solver's order (within 0.5:
    the inverse direction is expanding and further from the asymptotic regime at these step counts)."""
    exact = MIX.ode_solve(data, SIGMA_MIN, SIGMA_MAX)
    steps = (80, 160, 320)
    errs = []
    for n in steps:
        up = inversion_sigmas(edm_sigmas(n + 1, SIGMA_MIN, SIGMA_MAX, append_zero=False))
        errs.append(float(((invert(MIX, data, up, sampler=name, **opts) - exact) ** 2).mean().sqrt()))
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False)), errs
    measured = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert measured >= order - 0.5, (measured, errs)


@pytest.mark.parametrize("name,opts", [("heun", {}), ("dpmpp_2m", {}), ("unipc", {}), ("deis", {})])
def test_invert_then_sample_returns_the_input(name, opts, data):
    """Round trip on the same grid: the error shrinks, at least as fast as for a 2nd-order method
    (all four are >= 2nd order; Heun's round trip is even 3rd order since the trapezoidal rule is
    self-adjoint)."""
    errs = []
    for n in (10, 20, 40, 80):
        down = edm_sigmas(n + 1, SIGMA_MIN, SIGMA_MAX, append_zero=False)
        latent = invert(MIX, data, inversion_sigmas(down), sampler=name, **opts)
        back = SAMPLERS[name](MIX, latent, down, **opts)
        errs.append(float((back - data).abs().max()))
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < errs[0] * (10 / 80) ** 2, errs


def test_inversion_rejects_stochastic_and_bad_grids(data):
    up = inversion_sigmas(edm_sigmas(5))
    for name, opts in (("edm_sde", {}), ("ddim", {"eta": 1.0})):
        with pytest.raises(ValueError, match="stochastic|eta"):
            invert(MIX, data, up, sampler=name, **opts)
    with pytest.raises(ValueError, match="increasing"):
        invert(MIX, data, edm_sigmas(5, append_zero=False))
    with pytest.raises(ValueError, match="denoise_to_zero"):
        invert(MIX, data, up, denoise_to_zero=True)


def test_inversion_sigmas_reverses_and_drops_zero():
    down = edm_sigmas(6)
    up = inversion_sigmas(down)
    assert torch.equal(up, down[:-1].flip(0))
