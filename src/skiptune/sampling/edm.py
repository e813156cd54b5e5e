"""Euler, Heun (EDM Alg. 1) and the EDM stochastic sampler (EDM Alg. 2).

The probability-flow ODE in EDM's parametrisation (sigma(t) = t, s(t) = 1; Karras et al. 2022,
eq. 4) is dx/dsigma = (x - D(x, sigma)) / sigma. Every sampler takes the state ``x`` at
``sigmas[0]`` (for sampling: noise times ``sigmas[0]``) and returns the float64 state at
``sigmas[-1]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from skiptune.core.errors import InputError
from skiptune.sampling._core import (
    Callback,
    Denoiser,
    Evaluator,
    NoiseSource,
    check_sigmas,
    draw,
    finish,
    report,
    require_decreasing,
    start,
)


def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseSource | None = None,
    denoise_to_zero: bool = False,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (EDM Alg. 1 without the correction).

    d_i = (x_i - D(x_i, s_i)) / s_i, x_{i+1} = x_i + (s_{i+1} - s_i) d_i. The step to s = 0 gives
    exactly x = D(x_i, s_i). One NFE per step. ``noise`` is accepted for a uniform signature and unused.
    """
    s = check_sigmas(sigmas)
    ev = Evaluator(denoiser, x, extra_args)
    x = start(x, s)
    for i in range(len(s) - 1):
        denoised = ev(x, s[i], i)
        if s[i + 1] == 0:
            x_next = denoised
        else:
            x_next = x + (s[i + 1] - s[i]) / s[i] * (x - denoised)
        report(callback, i, s[i], s[i + 1], x, denoised, x_next)
        x = x_next
    return finish(ev, x, s, denoise_to_zero, callback)


def _heun_loop(
    ev: Evaluator,
    x: torch.Tensor,
    s: list[float],
    *,
    churn: float,
    tmin: float,
    tmax: float,
    s_noise: float,
    noise: NoiseSource | torch.Generator | None,
    stochastic: bool,
    callback: Callback | None,
) -> torch.Tensor:
    steps = len(s) - 1
    for i in range(steps):
        t_cur, t_next = s[i], s[i + 1]
        # Churn (EDM Alg. 2, lines 4-6): raise the noise level to t_hat = t (1 + gamma).
        gamma = min(churn / steps, math.sqrt(2) - 1) if tmin <= t_cur <= tmax else 0.0
        t_hat = t_cur * (1 + gamma)
        x_hat = x
        if stochastic:
            z = draw(noise, x)  # one draw per step whatever gamma, like EDM's reference loop
            if gamma > 0:
                x_hat = x + math.sqrt(t_hat**2 - t_cur**2) * s_noise * z
        denoised = ev(x_hat, t_hat, i)
        d = (x_hat - denoised) / t_hat
        if t_next == 0:
            x_next = denoised  # Euler step to 0: x_hat + (0 - t_hat) d = D(x_hat, t_hat)
        else:
            x_next = x_hat + (t_next - t_hat) * d
            d_prime = (x_next - ev(x_next, t_next, i)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d + 0.5 * d_prime)
        report(callback, i, t_hat, t_next, x_hat, denoised, x_next)
        x = x_next
    return x


def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseSource | None = None,
    denoise_to_zero: bool = False,
) -> torch.Tensor:
    """Heun's 2nd-order method, EDM Alg. 1.

    Euler predictor x' = x_i + (s_{i+1} - s_i) d_i, then, if s_{i+1} > 0, the trapezoidal corrector
    x_{i+1} = x_i + (s_{i+1} - s_i) (d_i + d'_i)/2 with d'_i = (x' - D(x', s_{i+1})) / s_{i+1}.
    NFE = 2N - 1 on a grid of N steps ending at 0 (the last step is Euler), 2N otherwise.
    """
    s = check_sigmas(sigmas)
    ev = Evaluator(denoiser, x, extra_args)
    x = start(x, s)
    x = _heun_loop(
        ev, x, s, churn=0.0, tmin=0.0, tmax=math.inf, s_noise=1.0, noise=None, stochastic=False, callback=callback
    )
    return finish(ev, x, s, denoise_to_zero, callback)


def sample_edm_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseSource | torch.Generator | None = None,
    denoise_to_zero: bool = False,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,  # noqa: N803 (EDM names)
    S_noise: float = 1.0,
) -> torch.Tensor:  # noqa: N803
    """EDM's stochastic sampler, Alg. 2 (Karras et al. 2022).

    For t_i in [S_tmin, S_tmax]: gamma_i = min(S_churn / N, sqrt(2) - 1), else 0; t_hat = t_i (1 + gamma_i),
    x_hat = x_i + sqrt(t_hat^2 - t_i^2) S_noise z with z ~ N(0, I) from ``noise``; then one Heun step
    from (x_hat, t_hat) to t_{i+1}. N is the number of steps of the grid. With S_churn = 0 this is
    exactly :func:`sample_heun` (one normal draw per step is still consumed). NFE as Heun.
    EDM's ImageNet-64 setting: S_churn 40, S_tmin 0.05, S_tmax 50, S_noise 1.003 (256 steps).
    """
    s = check_sigmas(sigmas)
    require_decreasing(s, "edm_sde")
    if S_churn < 0 or S_noise < 0:
        raise InputError("S_churn and S_noise must be >= 0")
    ev = Evaluator(denoiser, x, extra_args)
    x = start(x, s)
    x = _heun_loop(
        ev,
        x,
        s,
        churn=S_churn,
        tmin=S_tmin,
        tmax=S_tmax,
        s_noise=S_noise,
        noise=noise,
        stochastic=True,
        callback=callback,
    )
    return finish(ev, x, s, denoise_to_zero, callback)
