"""The sampler of distilled few-step models: multistep consistency sampling, and its one-step case.

:func:`sample_consistency` is Song et al. 2023, Alg. 1: x = D(x, t_0), then for each further level t_i,
x <- x + sqrt(t_i^2 - eps^2) z and x = D(x, t_i), with eps the model's sigma_min (0.002). With one step
(``nfe=1``, grid ``[sigma_max, 0]``) it is one-step generation, x = D(sigma_max z, sigma_max), as
consistency models and Diff-Instruct generators are sampled.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from skiptune.core.errors import InputError
from skiptune.sampling._core import Callback, Denoiser, Evaluator, NoiseSource, check_sigmas, draw, report, start


def sample_consistency(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise: NoiseSource | None = None,
    denoise_to_zero: bool = False,
    eps: float = 0.002,
) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1) on the levels ``sigmas[:-1]``.

    Level 0 maps the initial noise to data; every later level t_i > eps re-noises the estimate to t_i with
    fresh noise from ``noise`` (per seed) and maps it back. One NFE per level; the grid's last entry (0, or
    sigma_min) ends the chain, and is a level of its own only with ``denoise_to_zero`` on a grid ending above 0.
    """
    s = check_sigmas(sigmas)
    if s[-1] > s[0]:
        raise InputError("consistency sampling needs a decreasing grid")
    levels = s[:-1] + ([s[-1]] if denoise_to_zero and s[-1] > 0 else [])
    if not 0 < eps <= levels[-1]:
        raise InputError(f"eps must lie in (0, {levels[-1]:g}] (at most the lowest level), got {eps}")
    ev = Evaluator(denoiser, x, extra_args)
    x = start(x, s)
    denoised = x
    for i, t in enumerate(levels):
        if i:
            x = denoised + math.sqrt(t * t - eps * eps) * draw(noise, denoised)
        denoised = ev(x, t, i)
        report(callback, i, t, levels[i + 1] if i + 1 < len(levels) else 0.0, x, denoised, denoised)
    return denoised
