"""Noise schedules shared by networks, adapters and samplers (the EDM sigma convention, x = y + sigma n).

- VP SDE (Song et al. 2021; EDM Table 1): sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).
- Discrete-time VP models (DDPM, LDM, diffusers): abar_t = prod (1 - beta_s), sigma_t = sqrt(1/abar_t - 1).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from skiptune.core.errors import InputError

VP_BETA_MIN = 0.1
VP_BETA_D = 19.9


def vp_sigma(t: np.ndarray | float, beta_min: float = VP_BETA_MIN, beta_d: float = VP_BETA_D) -> np.ndarray:
    """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) of the VP SDE (EDM Table 1)."""
    t = np.asarray(t, dtype=np.float64)
    return np.sqrt(np.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_sigma_inv(sigma: np.ndarray | float, beta_min: float = VP_BETA_MIN, beta_d: float = VP_BETA_D) -> np.ndarray:
    """Inverse of :func:`vp_sigma`: t = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d."""
    sigma = np.asarray(sigma, dtype=np.float64)
    return (np.sqrt(beta_min**2 + 2 * beta_d * np.log1p(sigma**2)) - beta_min) / beta_d


def alphas_cumprod(
    num_train_timesteps: int = 1000,
    schedule: Literal["linear", "scaled_linear", "cosine"] = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> torch.Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s), float64, t = 0..T-1.

    ``linear``: DDPM (Ho et al. 2020), betas linear in [beta_start, beta_end] (1e-4, 0.02).
    ``scaled_linear``: LDM / Stable Diffusion, betas = linspace(sqrt(b0), sqrt(b1), T)^2 (use
    beta_start=0.00085, beta_end=0.012). ``cosine``: Nichol & Dhariwal 2021, eq. 17, s = 0.008,
    betas clipped at 0.999.
    """
    T = int(num_train_timesteps)
    if T < 2:
        raise InputError("num_train_timesteps >= 2")
    if schedule == "linear":
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    elif schedule == "cosine":
        s = 0.008
        f = np.cos((np.arange(T + 1, dtype=np.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    else:
        raise InputError(f"unknown schedule {schedule!r}; known: linear, scaled_linear, cosine")
    return torch.as_tensor(np.cumprod(1 - betas))


def sigmas_from_alphas_cumprod(abar: torch.Tensor | np.ndarray) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t), float64 (increasing in t)."""
    abar = torch.as_tensor(abar, dtype=torch.float64)
    if abar.ndim != 1 or not bool(((abar > 0) & (abar < 1)).all()):
        raise InputError("alphas_cumprod must be a 1-D array with values in (0, 1)")
    return ((1 - abar) / abar).sqrt()
