"""Deterministic samplers converge to the exact probability-flow ODE solution at their theoretical order.

The data are a 3-component isotropic Gaussian mixture in 2-D (exact denoiser). The reference
x(sigma_min) is the exact ODE solution (DOP853 at rtol 1e-12, accurate to ~1e-12, far below the
errors measured here). Grids run from 80 to sigma_min = 0.002 with no final step to 0, so no
first-order end step hides the order. The order is the least-squares slope of log(error) against
log(steps) over a window of step counts in the asymptotic regime.

Theoretical orders (asymptotic in the step size):
- Euler = DDIM = DPM-Solver++(1) = UniP-1 = DEIS-1 = iPNDM-1: 1.
- Heun (EDM Alg. 1), DPM-Solver++(2M): 2. DPM-Solver++(3M): 2 as published (phi_3 on D2), 3 with the
  third-order weight 2 phi_3 (``dpmpp_3m_order3``).
- UniPC-p with corrector: p + 1 (Zhao et al. 2023, Thm. 3.3); without corrector (UniP-p): p. When the
  rho coefficients are solved (not the hard-coded 1/2 of the order-2 predictor and order-1 corrector),
  B(h) cancels from B(h) R^-1 b, so bh1 and bh2 differ only in the warm-up and order-2 steps.
- DEIS tAB with k points: k.
- iPNDM-k: fixed Adams-Bashforth weights are exact-order only on grids uniform in sigma (order k
  there); on any other smooth grid the weight mismatch is O(h^3) per step, so order 2 for k >= 2.
Warm-up steps of lower order add a fixed number of lower-order local errors; they are damped by the
flow's contraction from sigma_max = 80 and do not show in these windows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skiptune.sampling import SAMPLERS, GaussianMixture, SeedNoise, edm_sigmas, logsnr_sigmas, make_sigmas, sample_dpmpp

MIX = GaussianMixture([0.5, 0.3, 0.2], [[-1.5, 0.5], [1.0, 1.2], [0.8, -1.4]], [0.3, 0.5, 0.7])
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0

RUN = dict(SAMPLERS, dpmpp=sample_dpmpp)


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, torch.Tensor]:
    x_t = SeedNoise(range(16), dtype=torch.float64).randn([2]) * SIGMA_MAX
    return x_t, MIX.ode_solve(x_t, SIGMA_MAX, SIGMA_MIN)


def linear_sigmas(n: int, smin: float, smax: float) -> torch.Tensor:
    return torch.linspace(smax, smin, n, dtype=torch.float64)


def error(name: str, opts: dict, sigmas: torch.Tensor, x_t: torch.Tensor, ref: torch.Tensor) -> float:
    out = RUN[name](MIX, x_t, sigmas, **opts)
    return float(((out - ref) ** 2).mean().sqrt())


def slope(steps: tuple[int, ...], errs: list[float]) -> float:
    return -float(np.polyfit(np.log(steps), np.log(errs), 1)[0])


NO_LOF = {"lower_order_final": False}
W1, W2, W3 = (80, 160, 320), (160, 320, 640), (320, 640, 1280)
CASES = [
    # id, sampler, options, grid, step counts (asymptotic window), theoretical order
    ("euler", "euler", {}, "edm", W2, 1),
    ("ddim", "ddim", {}, "edm", W2, 1),
    ("heun", "heun", {}, "edm", W1, 2),
    ("dpmpp_2m", "dpmpp_2m", NO_LOF, "edm", W1, 2),
    ("dpmpp_2m-logsnr", "dpmpp_2m", NO_LOF, "logsnr", W1, 2),
    ("dpmpp_3m", "dpmpp_3m", NO_LOF, "edm", W2, 2),
    ("dpmpp_3m_order3", "dpmpp_3m_order3", NO_LOF, "edm", W2, 3),
    ("unipc1-bh1", "unipc", {"order": 1, **NO_LOF}, "edm", W2, 2),
    ("unipc2-bh1", "unipc", {"order": 2, **NO_LOF}, "edm", W2, 3),
    ("unipc2-bh2", "unipc", {"order": 2, "variant": "bh2", **NO_LOF}, "edm", W2, 3),
    ("unipc3-bh1", "unipc", {"order": 3, **NO_LOF}, "edm", W3, 4),
    ("unipc3-logsnr", "unipc", {"order": 3, **NO_LOF}, "logsnr", W3, 4),
    ("unip2", "unipc", {"order": 2, "use_corrector": False, **NO_LOF}, "edm", W1, 2),
    ("unip3", "unipc", {"order": 3, "use_corrector": False, **NO_LOF}, "edm", W2, 3),
    ("deis2-vp", "deis", {"order": 2}, "edm", W2, 2),
    ("deis3-vp", "deis", {"order": 3}, "logsnr", W2, 3),
    ("deis3-sigma", "deis", {"order": 3, "time": "sigma"}, "edm", W1, 3),
    ("deis4-sigma", "deis", {"order": 4, "time": "sigma"}, "edm", W2, 4),
    ("ipndm2", "ipndm", {"order": 2}, "edm", W2, 2),
    ("ipndm3-edm", "ipndm", {"order": 3}, "edm", W2, 2),
    ("ipndm4-edm", "ipndm", {"order": 4}, "edm", W2, 2),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_convergence_order(case, problem):
    _, name, opts, grid, steps, theory = case
    x_t, ref = problem
    errs = [
        error(name, opts, make_sigmas(grid, n + 1, SIGMA_MIN, SIGMA_MAX, append_zero=False), x_t, ref) for n in steps
    ]
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False)), errs
    order = slope(steps, errs)
    assert abs(order - theory) <= 0.3, f"{case[0]}: measured order {order:.2f}, theory {theory}, errors {errs}"


@pytest.mark.parametrize("order", [2, 3, 4])
def test_ipndm_is_adams_bashforth_on_sigma_uniform_grid(order):
    """On a grid uniform in sigma, iPNDM's fixed weights are the Adams-Bashforth weights, i.e. the
    integrals of the Lagrange basis over equispaced nodes, which DEIS(time="sigma") computes by
    quadrature: the two must agree to rounding (this checks every iPNDM coefficient)."""
    x_t = SeedNoise(range(8), dtype=torch.float64).randn([2]) * 40.0
    sigmas = linear_sigmas(41, 1.0, 40.0)
    a = RUN["ipndm"](MIX, x_t, sigmas, order=order)
    b = RUN["deis"](MIX, x_t, sigmas, order=order, time="sigma")
    assert float((a - b).abs().max()) <= 1e-11


def test_single_gaussian_closed_form_convergence():
    """On one Gaussian (closed-form ODE solution) every deterministic sampler converges."""
    gauss = GaussianMixture.gaussian([0.5, -1.0, 2.0], 0.7)
    x_t = SeedNoise(range(4), dtype=torch.float64).randn([3]) * SIGMA_MAX
    ref = gauss.ode_solve(x_t, SIGMA_MAX, SIGMA_MIN)
    for name in ("euler", "heun", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ipndm"):
        errs = [
            float((RUN[name](gauss, x_t, edm_sigmas(n + 1, append_zero=False)) - ref).abs().max()) for n in (20, 80)
        ]
        assert errs[1] < errs[0] / 3.5, (name, errs)  # at least first order: 4x for 4x the steps, minus slack


def test_first_order_methods_coincide(problem):
    """DDIM, DPM-Solver++(1), DEIS-1 (both time variables), UniP-1, iPNDM-1 and Euler are one method."""
    x_t, _ = problem
    for sigmas in (edm_sigmas(12), logsnr_sigmas(9, append_zero=False)):
        base = RUN["ddim"](MIX, x_t, sigmas)
        others = {
            "dpmpp1": RUN["dpmpp"](MIX, x_t, sigmas, order=1),
            "deis1-vp": RUN["deis"](MIX, x_t, sigmas, order=1),
            "deis1-sigma": RUN["deis"](MIX, x_t, sigmas, order=1, time="sigma"),
            "unip1": RUN["unipc"](MIX, x_t, sigmas, order=1, use_corrector=False),
            "ipndm1": RUN["ipndm"](MIX, x_t, sigmas, order=1),
            "euler": RUN["euler"](MIX, x_t, sigmas),
        }
        for key, out in others.items():
            assert float((out - base).abs().max()) <= 1e-10, key


def test_3m_local_error_on_quadratic_data_prediction():
    """One step with the third-order weight is exact when m(lambda) is quadratic (x-independent denoiser); the
    published weight misses the quadratic term by half of its exact contribution."""
    from skiptune.sampling.exponential import dpmpp_step

    def m(lam: float) -> float:
        return 0.4 * lam**2 - 1.3 * lam + 0.2

    lam0, h = 0.3, 0.2
    lams = [lam0 - 2.5 * h, lam0 - h, lam0]
    x = torch.tensor([0.7], dtype=torch.float64)
    ms = [torch.tensor([m(v)], dtype=torch.float64) for v in lams]
    out = dpmpp_step(x, ms, lams, math.exp(-lam0), math.exp(-(lam0 + h)), 3, third_order_weight=True)
    published = dpmpp_step(x, ms, lams, math.exp(-lam0), math.exp(-(lam0 + h)), 3)
    # Exact: x_t = e^{-h} x + int_0^h e^{-(h - u)} m(lam0 + u) du, with
    # int e^{-(h-u)} du = 1 - e^{-h}, int e^{-(h-u)} u du = h - 1 + e^{-h},
    # int e^{-(h-u)} u^2 du = h^2 - 2h + 2 - 2 e^{-h}.
    a, b, c = 0.4, 2 * 0.4 * lam0 - 1.3, m(lam0)  # m(lam0 + u) = a u^2 + b u + c
    e = math.exp(-h)
    exact = e * 0.7 + c * (1 - e) + b * (h - 1 + e) + a * (h * h - 2 * h + 2 - 2 * e)
    assert abs(float(out) - exact) < 1e-14
    # the divided difference D2 recovers a h^2 exactly here, so the published step misses half of
    # the quadratic term's weight 2 E_3(-h) a h^2 = a (h^2 - 2h + 2 - 2 e^{-h})
    assert abs(float(published) - (exact - 0.5 * a * (h * h - 2 * h + 2 - 2 * e))) < 1e-14
