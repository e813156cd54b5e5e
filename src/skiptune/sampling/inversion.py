"""ODE inversion, data -> noise (Skip-Tuning paper, Sec. 5.4; DDIM inversion, Song et al. 2021, Sec. 4.3).

The probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma is deterministic and can be integrated
in either direction. The deterministic samplers here are written for any strictly monotone grid
(their step formulas only involve sigma_s, sigma_t and lambda differences, which change sign but
stay valid), so inversion runs the very same solver code on an increasing grid from sigma_min > 0 to
sigma_max. The start state is taken as x(sigma_min) (clean data, the O(sigma_min) noise neglected).
"""

from __future__ import annotations

from typing import Any

import torch

from skiptune.core.errors import InputError
from skiptune.sampling._core import Denoiser, check_sigmas
from skiptune.sampling.samplers import DETERMINISTIC, get_sampler


def inversion_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The increasing grid that retraces a decreasing sampling grid (its final 0 dropped)."""
    s = check_sigmas(sigmas)
    if s[-1] > s[0]:
        raise InputError("expected a decreasing sampling grid")
    if s[-1] == 0:
        s = s[:-1]
    if len(s) < 2:
        raise InputError("the grid has fewer than 2 positive sigmas")
    return torch.tensor(s[::-1], dtype=torch.float64)


def invert(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, sampler: str = "heun", **opts: Any
) -> torch.Tensor:
    """Integrate the probability-flow ODE from ``sigmas[0]`` up to ``sigmas[-1]`` (an increasing grid).

    ``sampler`` is any deterministic sampler (``euler``, ``heun``, ``ddim`` with eta = 0, ``dpmpp_2m``,
    ``dpmpp_3m``, ``unipc``, ``deis``, ``ipndm``); ``opts`` go to it (e.g. ``order``, ``callback``).
    Returns the float64 latent at ``sigmas[-1]``; divide by sigmas[-1] for a standard-normal latent.
    """
    if sampler not in DETERMINISTIC:
        raise InputError(f"sampler {sampler!r} is stochastic; inversion needs one of {sorted(DETERMINISTIC)}")
    if sampler == "ddim" and opts.get("eta", 0.0) != 0:
        raise InputError("ddim inversion needs eta = 0")
    if opts.get("denoise_to_zero"):
        raise InputError("denoise_to_zero makes no sense for inversion")
    s = check_sigmas(sigmas)
    if not s[-1] > s[0]:
        raise InputError("inversion needs an increasing sigma grid (sigma_min > 0 first); see inversion_sigmas()")
    return get_sampler(sampler)(denoiser, x, sigmas, **opts)
