"""Noise-level grids (decreasing, float64), each ending in an appended 0 unless ``append_zero=False``.

``n`` is the number of positive noise levels. With the appended 0 a grid has ``n`` steps; without
it, ``n - 1`` steps. All continuous grids run from ``sigma_max`` down to ``sigma_min``.

- :func:`edm_sigmas`: EDM eq. (5), sigma_i = (smax^(1/r) + i/(n-1) (smin^(1/r) - smax^(1/r)))^r, r = 7.
- :func:`logsnr_sigmas`: uniform in lambda = -log sigma (DPM-Solver's "logSNR" steps).
- :func:`vp_time_sigmas`: uniform in VP time t (``power=1``) or in t^(1/2) (``power=2``, DPM-Solver's
  "time_quadratic"), with the VP-SDE schedule sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1)
  (Song et al. 2021; EDM Table 1); the ends are placed at t(sigma_max) and t(sigma_min).
- :func:`discrete_timesteps` / :func:`discrete_sigmas`: the timestep subsets used with DDPM/LDM and
  diffusers models and their sigmas, sigma_t = sqrt(1/abar_t - 1).
- :func:`discrete_time_uniform_sigmas`: DPM-Solver's ``time_uniform`` steps on a discrete-time model
  (``NoiseScheduleVP("discrete")``): t uniform from 1 to 1/N, log alpha interpolated linearly in t
  between the trained levels t_n = n/N (as U-ViT's and LDM's DPM-Solver sampling does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from skiptune.core.errors import InputError
from skiptune.core.schedules import (
    VP_BETA_D,
    VP_BETA_MIN,
    alphas_cumprod,
    sigmas_from_alphas_cumprod,
    vp_sigma,
    vp_sigma_inv,
)

__all__ = [
    "GRIDS",
    "alphas_cumprod",
    "discrete_sigmas",
    "discrete_time_uniform_sigmas",
    "discrete_timesteps",
    "edm_sigmas",
    "logsnr_sigmas",
    "make_sigmas",
    "sigmas_from_alphas_cumprod",
    "vp_sigma",
    "vp_sigma_inv",
    "vp_time_quadratic_sigmas",
    "vp_time_sigmas",
    "vp_time_uniform_sigmas",
]



def _check_range(n: int, sigma_min: float, sigma_max: float) -> None:
    if int(n) != n or n < 1:
        raise InputError(f"n (number of positive sigmas) must be an integer >= 1, got {n}")
    if not 0 < sigma_min < sigma_max < math.inf:
        raise InputError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")


def _finish(values: np.ndarray, append_zero: bool) -> torch.Tensor:
    out = torch.as_tensor(np.asarray(values, dtype=np.float64))
    if append_zero:
        out = torch.cat([out, out.new_zeros(1)])
    return out


def _unit(n: int) -> np.ndarray:
    """i/(n-1) for i = 0..n-1 (just [0] when n = 1)."""
    return np.arange(n, dtype=np.float64) / max(n - 1, 1)


def edm_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *, append_zero: bool = True
) -> torch.Tensor:
    """EDM's polynomial grid (Karras et al. 2022, eq. 5)."""
    _check_range(n, sigma_min, sigma_max)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    values = (a + _unit(n) * (b - a)) ** rho
    values[0] = sigma_max
    if n > 1:
        values[-1] = sigma_min
    return _finish(values, append_zero)


def logsnr_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, append_zero: bool = True
) -> torch.Tensor:
    """Uniform in log-SNR lambda = -log sigma, i.e. geometric in sigma (Lu et al. 2022, Sec. 3.3)."""
    _check_range(n, sigma_min, sigma_max)
    values = np.exp(math.log(sigma_max) + _unit(n) * (math.log(sigma_min) - math.log(sigma_max)))
    values[0] = sigma_max
    if n > 1:
        values[-1] = sigma_min
    return _finish(values, append_zero)


def vp_time_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    *,
    power: float = 1.0,
    beta_min: float = VP_BETA_MIN,
    beta_d: float = VP_BETA_D,
    append_zero: bool = True,
) -> torch.Tensor:
    """Grid uniform in t^(1/power) of the VP SDE: power 1 = time-uniform, 2 = time-quadratic.

    t_i = (t_max^(1/p) + i/(n-1) (t_min^(1/p) - t_max^(1/p)))^p with t_max = t(sigma_max),
    t_min = t(sigma_min) (DPM-Solver, ``get_time_steps``), then sigma_i = sigma(t_i).
    """
    _check_range(n, sigma_min, sigma_max)
    if power <= 0:
        raise InputError("power > 0")
    t_max = float(vp_sigma_inv(sigma_max, beta_min, beta_d))
    t_min = float(vp_sigma_inv(sigma_min, beta_min, beta_d))
    a, b = t_max ** (1 / power), t_min ** (1 / power)
    values = vp_sigma((a + _unit(n) * (b - a)) ** power, beta_min, beta_d)
    values[0] = sigma_max
    if n > 1:
        values[-1] = sigma_min
    return _finish(values, append_zero)


def vp_time_uniform_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, append_zero: bool = True, **vp: float
) -> torch.Tensor:
    """Uniform in VP time t (see :func:`vp_time_sigmas`)."""
    return vp_time_sigmas(n, sigma_min, sigma_max, power=1.0, append_zero=append_zero, **vp)


def vp_time_quadratic_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, append_zero: bool = True, **vp: float
) -> torch.Tensor:
    """Uniform in sqrt(t) of the VP SDE (see :func:`vp_time_sigmas`)."""
    return vp_time_sigmas(n, sigma_min, sigma_max, power=2.0, append_zero=append_zero, **vp)


GRIDS: dict[str, Callable[..., torch.Tensor]] = {
    "edm": edm_sigmas,
    "logsnr": logsnr_sigmas,
    "vp_time_uniform": vp_time_uniform_sigmas,
    "vp_time_quadratic": vp_time_quadratic_sigmas,
}


def make_sigmas(
    kind: str, n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, append_zero: bool = True, **kwargs: float
) -> torch.Tensor:
    """Dispatch to a continuous grid by name (one of :data:`GRIDS`)."""
    if kind not in GRIDS:
        raise InputError(f"unknown grid {kind!r}; known: {', '.join(GRIDS)}")
    return GRIDS[kind](n, sigma_min, sigma_max, append_zero=append_zero, **kwargs)


# ---------------------------------------------------------------------------------------------
# Discrete-time VP models (DDPM, LDM, diffusers)


def discrete_timesteps(
    num_train_timesteps: int,
    n: int,
    spacing: Literal["leading", "trailing", "linspace", "quadratic"] = "leading",
    offset: int = 0,
) -> torch.Tensor:
    """``n`` distinct training timesteps, descending (int64).

    - ``leading``: k * (T // n) + offset, k = 0..n-1 (diffusers "leading"; DDIM/LDM "uniform" is
      this with offset 1 when n divides T);
    - ``trailing``: round(T - k T / n) - 1 (diffusers "trailing", reaches t = T-1);
    - ``linspace``: round(linspace(0, T-1, n));
    - ``quadratic``: floor(linspace(0, sqrt(0.8 T), n)^2) + offset (DDIM's "quad").

    Raises ValueError if the rule produces repeated or out-of-range timesteps.
    """
    T, n = int(num_train_timesteps), int(n)
    if not 1 <= n <= T:
        raise InputError(f"need 1 <= n <= num_train_timesteps, got n={n}, T={T}")
    k = np.arange(n)
    if spacing == "leading":
        ts = k * (T // n) + offset
    elif spacing == "trailing":
        ts = np.round(T - k * T / n).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, n)).astype(np.int64)
    elif spacing == "quadratic":
        ts = (np.linspace(0, math.sqrt(0.8 * T), n) ** 2).astype(np.int64) + offset
    else:
        raise InputError(f"unknown spacing {spacing!r}; known: leading, trailing, linspace, quadratic")
    ts = np.sort(ts)[::-1].copy()
    if len(np.unique(ts)) != n:
        raise InputError(f"spacing {spacing!r} gives repeated timesteps for n={n}, T={T}")
    if ts.min() < 0 or ts.max() >= T:
        raise InputError(f"timesteps outside [0, {T - 1}] (spacing {spacing!r}, offset {offset})")
    return torch.as_tensor(ts, dtype=torch.int64)


def discrete_sigmas(
    abar: torch.Tensor | np.ndarray, timesteps: torch.Tensor | np.ndarray, *, append_zero: bool = True
) -> torch.Tensor:
    """sigma at the given training timesteps (sorted to descending sigma), plus an optional final 0."""
    sig = sigmas_from_alphas_cumprod(abar)
    ts = torch.as_tensor(timesteps, dtype=torch.int64)
    values = torch.sort(sig[ts], descending=True).values
    return _finish(values.numpy(), append_zero)


def discrete_time_uniform_sigmas(abar: torch.Tensor | np.ndarray, n: int, *, append_zero: bool = True) -> torch.Tensor:
    """``n`` sigmas at times t uniform in [1/N, 1] (descending) of a discrete-time model with N levels.

    DPM-Solver's discrete schedule places level n (abar_n, n = 1..N) at t_n = n/N and interpolates
    log alpha_t = log(abar)/2 linearly in t; sigma_t = sqrt(alpha_t^-2 - 1). The grid starts at the
    top level (t = 1) and ends at the lowest (t = 1/N).
    """
    a = np.asarray(torch.as_tensor(abar, dtype=torch.float64).cpu().numpy(), dtype=np.float64)
    if a.ndim != 1 or len(a) < 2:
        raise InputError(f"alphas_cumprod must be 1-D with at least 2 levels, got shape {a.shape}")
    if int(n) != n or n < 1:
        raise InputError(f"n (number of positive sigmas) must be an integer >= 1, got {n}")
    big_n = len(a)
    t_levels = np.arange(1, big_n + 1, dtype=np.float64) / big_n
    t = np.linspace(1.0, 1.0 / big_n, int(n)) if n > 1 else np.array([1.0])
    log_alpha = np.interp(t, t_levels, 0.5 * np.log(a))
    return _finish(np.sqrt(np.expm1(-2.0 * log_alpha)), append_zero)
