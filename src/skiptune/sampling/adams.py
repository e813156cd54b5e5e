"""Linear multistep methods on the noise prediction: DEIS (tAB) and iPNDM.

Both integrate the EDM ODE dx/dsigma = eps(x, sigma), eps = (x - D(x, sigma)) / sigma, from stored
past values of eps:

- DEIS tAB (Zhang & Chen 2023, eq. 14): eps is extrapolated by the Lagrange polynomial through the
  last k points in a time variable tau and the ODE is integrated exactly against it. In the VE/EDM
  variables the exponential-integrator weights of the VP form reduce to
  C_ij = int_{sigma_i}^{sigma_{i+1}} L_j(tau(sigma)) dsigma (the x/alpha rescaling absorbs Psi),
  computed here by 32-point Gauss-Legendre quadrature in sigma. tau is the VP-SDE time
  (``time="vp"``, linear beta schedule, the DEIS paper's setting and zju-pi/diff-sampler's "tab") or
  sigma itself (``time="sigma"``, DEIS's rho-AB: variable-step Adams-Bashforth in sigma). Order k uses
  k points (a polynomial of degree k-1, the paper's tAB(k-1)); order 1 is DDIM exactly.
- iPNDM (Zhang & Chen 2023, App.; as in diff-sampler): a DDIM/Euler step driven by
  eps~ = e_i, (3e_i - e_{i-1})/2, (23e_i - 16e_{i-1} + 5e_{i-2})/12 or
  (55e_i - 59e_{i-1} + 37e_{i-2} - 9e_{i-3})/24: fixed-step Adams-Bashforth weights applied on any
  grid. On a grid uniform in sigma it has order k; on other grids the fixed weights limit it to order 2.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from skiptune.core.errors import InputError
from skiptune.sampling._core import Callback, Denoiser, Evaluator, NoiseSource, check_sigmas, finish, report, start
from skiptune.sampling.grids import VP_BETA_D, VP_BETA_MIN, vp_sigma_inv

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(32)


def deis_coefficients(
    sigmas: list[float],
    order: int,
    time: Literal["vp", "sigma"] = "vp",
    beta_min: float = VP_BETA_MIN,
    beta_d: float = VP_BETA_D,
) -> list[np.ndarray]:
    """Per step i, the weights C_ij (j = 0..k-1, newest first) with x_{i+1} = x_i + sum_j C_ij eps_{i-j}."""
    if time == "vp":

        def tau(s: np.ndarray) -> np.ndarray:
            return vp_sigma_inv(s, beta_min, beta_d)
    elif time == "sigma":

        def tau(s: np.ndarray) -> np.ndarray:
            return np.asarray(s, dtype=np.float64)
    else:
        raise InputError(f"DEIS time variable must be 'vp' or 'sigma', got {time!r}")
    s = np.asarray(sigmas, dtype=np.float64)
    taus = tau(s)
    out = []
    for i in range(len(s) - 1):
        k = min(order, i + 1)
        half, mid = 0.5 * (s[i + 1] - s[i]), 0.5 * (s[i + 1] + s[i])
        tq = tau(mid + half * _GL_NODES)
        nodes = taus[[i - j for j in range(k)]]
        coeffs = np.empty(k)
        for j in range(k):
            basis = np.ones_like(tq)
            for m in range(k):
                if m != j:
                    basis *= (tq - nodes[m]) / (nodes[j] - nodes[m])
            coeffs[j] = half * np.dot(_GL_WEIGHTS, basis)
        if k == 1:
            coeffs[0] = s[i + 1] - s[i]  # the quadrature of 1, exactly
        out.append(coeffs)
    return out


def sample_deis(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    order: int = 3,
    time: Literal["vp", "sigma"] = "vp",
    beta_min: float = VP_BETA_MIN,
    beta_d: float = VP_BETA_D,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseSource | None = None,
    denoise_to_zero: bool = False,
) -> torch.Tensor:
    """DEIS tAB with k = min(order, i + 1) points at step i (order 1..4). One NFE per step.

    Reference: zju-pi/diff-sampler's ``tab`` DEIS, run on a grid ending at sigma_min (NFE = number of steps),
    the default of :class:`~skiptune.experiment.generate.SamplingSpec` for it. On a grid ending at 0 the last
    step is a multistep step to sigma = 0, not x = D(x, sigma)."""
    if order not in (1, 2, 3, 4):
        raise InputError(f"DEIS order must be 1..4, got {order}")
    s = check_sigmas(sigmas)
    coeffs = deis_coefficients(s, order, time, beta_min, beta_d)
    ev = Evaluator(denoiser, x, extra_args)
    x = start(x, s)
    eps: list[torch.Tensor] = []
    for i in range(len(s) - 1):
        denoised = ev(x, s[i], i)
        eps = [(x - denoised) / s[i], *eps[: order - 1]]  # newest first
        x_next = x
        for c, e in zip(coeffs[i], eps, strict=True):
            x_next = x_next + float(c) * e
        if s[i + 1] == 0 and len(coeffs[i]) == 1:
            x_next = denoised  # identical maths, exact arithmetic
        report(callback, i, s[i], s[i + 1], x, denoised, x_next)
        x = x_next
    return finish(ev, x, s, denoise_to_zero, callback)


_IPNDM_WEIGHTS = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def sample_ipndm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    order: int = 4,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseSource | None = None,
    denoise_to_zero: bool = False,
) -> torch.Tensor:
    """iPNDM with up to ``order`` (1..4) past eps values, lower orders while warming up. One NFE per step.

    Reference: zju-pi/diff-sampler's iPNDM (order 4), run on a grid ending at sigma_min (NFE = number of
    steps), the default of :class:`~skiptune.experiment.generate.SamplingSpec` for it. On a grid ending at 0
    the last step is x + (0 - sigma) eps_bar with the Adams-Bashforth mix, not x = D(x, sigma)."""
    if order not in (1, 2, 3, 4):
        raise InputError(f"iPNDM order must be 1..4, got {order}")
    s = check_sigmas(sigmas)
    ev = Evaluator(denoiser, x, extra_args)
    x = start(x, s)
    eps: list[torch.Tensor] = []
    for i in range(len(s) - 1):
        denoised = ev(x, s[i], i)
        eps = [(x - denoised) / s[i], *eps[: order - 1]]
        weights = _IPNDM_WEIGHTS[len(eps) - 1]
        eps_bar = weights[0] * eps[0]
        for w, e in zip(weights[1:], eps[1:], strict=True):
            eps_bar = eps_bar + w * e
        x_next = denoised if (s[i + 1] == 0 and len(eps) == 1) else x + (s[i + 1] - s[i]) * eps_bar
        report(callback, i, s[i], s[i + 1], x, denoised, x_next)
        x = x_next
    return finish(ev, x, s, denoise_to_zero, callback)
