"""Shared machinery of the samplers: grid checks, the denoiser call, finiteness checks, callbacks.

Conventions (EDM, Karras et al. 2022, Sec. 2; k-diffusion): the data are ``y``, the noisy state is
``x = y + sigma * n`` and a *denoiser* ``D(x, sigma, **extra_args)`` predicts ``y``. Samplers integrate
in float64 and call the denoiser in the dtype it asks for (:func:`denoiser_input_dtype`); the output
is cast back to float64. Step coefficients are computed in Python floats (IEEE double).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from skiptune.core.errors import InputError, SkiptuneError
from skiptune.core.sigma import mark_uniform

Denoiser = Callable[..., torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


class NonFiniteError(SkiptuneError, FloatingPointError, ValueError):
    """NaN or inf appeared during sampling; ``step`` and ``sigma`` say where.

    ``step`` is the index i of the step (sigmas[i] -> sigmas[i+1]) during which it happened; ``sigma``
    is the noise level of the failing denoiser call (``what="denoised"``) or of the new state
    (``what="x"``, i.e. sigmas[i+1]). A SkiptuneError, a FloatingPointError and a ValueError.
    """

    def __init__(self, what: str, step: int, sigma: float):
        self.what, self.step, self.sigma = what, step, sigma
        super().__init__(
            f"non-finite values (NaN or inf) in {what} at step {step} (sigma={sigma:.6g}); "
            "check the network, its dtype and the sigma range it was trained for"
        )


class NoiseSource(Protocol):
    """Anything with ``randn_like(x)``, e.g. :class:`skiptune.sampling.noise.SeedNoise`."""

    def randn_like(self, x: torch.Tensor) -> torch.Tensor: ...


def check_sigmas(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    """Validate a noise-level grid and return it as Python floats.

    A grid is strictly monotone, finite and positive, except that a *decreasing* grid may end in
    exactly one 0 (the final "step to the data"). Increasing grids are used for ODE inversion.
    """
    if isinstance(sigmas, torch.Tensor):
        if sigmas.ndim != 1:
            raise InputError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
        values = [float(v) for v in sigmas.detach().to("cpu", torch.float64)]
    else:
        values = [float(v) for v in sigmas]
    if len(values) < 2:
        raise InputError(f"a sigma grid needs at least 2 entries (1 step), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise InputError("sigmas must be finite")
    if any(v <= 0 for v in values[:-1]) or values[-1] < 0:
        raise InputError("sigmas must be > 0, except a final 0 on a decreasing grid")
    diffs = [b - a for a, b in zip(values[:-1], values[1:], strict=True)]
    if not (all(d < 0 for d in diffs) or all(d > 0 for d in diffs)):
        raise InputError("sigmas must be strictly decreasing (sampling) or strictly increasing (inversion)")
    if values[-1] == 0 and diffs[0] > 0:
        raise InputError("an increasing grid cannot contain 0")
    return values


def solver_steps_left(sigmas: list[float], i: int) -> int:
    """How many solver steps remain from step ``i`` on (``i`` included), a final step to 0 not counted.

    Multistep solvers lower their order at the final steps (official DPM-Solver and UniPC code:
    order <= steps left, so the last step is first order). Their grids end at sigma_min; the step
    sigma_min -> 0 of a grid ending at 0 is x = D(x, sigma_min), no solver step, so it must not
    count, else the last real step (the largest in log-sigma on an EDM grid) keeps a higher order.
    """
    real = len(sigmas) - 1 - (1 if sigmas[-1] == 0 else 0)
    return max(real - i, 1)


def denoiser_input_dtype(denoiser: Any) -> torch.dtype | None:
    """The dtype in which ``denoiser`` wants ``x``.

    An ``input_dtype`` attribute wins (our wrappers set it: float64 for the VP wrapper, which does its
    conversions in float64 and casts only the network input); otherwise the dtype of the first floating
    parameter of an ``nn.Module``; otherwise None (x is passed in float64).
    """
    dtype = getattr(denoiser, "input_dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(denoiser, torch.nn.Module):
        for p in denoiser.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def check_finite(t: torch.Tensor, what: str, step: int, sigma: float) -> None:
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(what, step, sigma)


class Evaluator:
    """Calls ``denoiser(x, sigma_vec, **extra_args)`` in its input dtype; counts calls (NFE).

    ``sigma_vec`` is a float64 tensor of shape [batch] (one sigma per sample, k-diffusion style),
    marked with the step's sigma (:func:`skiptune.core.sigma.mark_uniform`): skip rules inside the
    denoiser then use that Python number and never read the tensor back from the device.
    The output is returned in float64 and checked for NaN/inf.
    """

    def __init__(self, denoiser: Denoiser, x: torch.Tensor, extra_args: Mapping[str, Any] | None):
        self.denoiser = denoiser
        self.extra_args = dict(extra_args or {})
        self.dtype = denoiser_input_dtype(denoiser)
        self.batch = x.shape[0]
        self.device = x.device
        self.nfe = 0

    def __call__(self, x: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        s = torch.full((self.batch,), sigma, dtype=torch.float64, device=self.device)
        if isinstance(sigma, (int, float)):
            mark_uniform(s, sigma)
        x_in = x if self.dtype is None else x.to(self.dtype)
        out = self.denoiser(x_in, s, **self.extra_args)
        self.nfe += 1
        if out.shape != x.shape:
            raise InputError(f"denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        out = out.to(torch.float64)
        check_finite(out, "denoised", step, sigma)
        return out


def start(x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """The float64 integration state, checked for finiteness."""
    if x.ndim < 1 or x.shape[0] < 1:
        raise InputError("x must have a leading batch dimension")
    x = x.to(torch.float64)
    check_finite(x, "x", 0, sigmas[0])
    return x


def report(
    callback: Callback | None,
    step: int,
    sigma: float,
    sigma_next: float,
    x: torch.Tensor,
    denoised: torch.Tensor,
    x_next: torch.Tensor,
) -> None:
    """Check the new state and call ``callback`` once per step.

    The callback gets a dict with ``step``, ``sigma`` (where ``denoised`` was evaluated first in the
    step), ``sigma_next``, ``x`` (the state at ``sigma``), ``denoised`` and ``x_next`` (the state at
    ``sigma_next``), all tensors in float64.
    """
    check_finite(x_next, "x", step, sigma_next)
    if callback is not None:
        callback(
            {"step": step, "sigma": sigma, "sigma_next": sigma_next, "x": x, "denoised": denoised, "x_next": x_next}
        )


def finish(
    ev: Evaluator, x: torch.Tensor, sigmas: list[float], denoise_to_zero: bool, callback: Callback | None
) -> torch.Tensor:
    """Optional final ``x <- D(x, sigma_last)`` when the grid ends above 0 (one extra NFE).

    This is the first-order exponential-integrator step from ``sigma_last`` to 0 (the limit
    h -> infinity of DDIM / DPM-Solver-1), as in DPM-Solver's and UniPC's ``denoise_to_zero``.
    Nothing happens if the grid already ends at 0.
    """
    if not denoise_to_zero or sigmas[-1] == 0:
        return x
    if sigmas[-1] > sigmas[0]:
        raise InputError("denoise_to_zero is meaningless on an increasing (inversion) grid")
    step = len(sigmas) - 1
    denoised = ev(x, sigmas[-1], step)
    report(callback, step, sigmas[-1], 0.0, x, denoised, denoised)
    return denoised


def draw(noise: NoiseSource | torch.Generator | None, x: torch.Tensor) -> torch.Tensor:
    """A standard normal tensor shaped like ``x`` (float64) from ``noise``.

    ``noise`` may be a per-seed source (batch-composition independent), a ``torch.Generator`` (one
    stream for the whole batch), or None (torch's global generator).
    """
    if noise is None:
        z = torch.randn(x.shape, dtype=torch.float64, device=x.device)
    elif isinstance(noise, torch.Generator):
        z = torch.randn(x.shape, dtype=torch.float64, device=x.device, generator=noise)
    else:
        z = noise.randn_like(x)
    if z.shape != x.shape:
        raise InputError(f"noise source returned shape {tuple(z.shape)} for x of shape {tuple(x.shape)}")
    return z.to(device=x.device, dtype=torch.float64)


def require_decreasing(sigmas: list[float], name: str) -> None:
    if sigmas[-1] > sigmas[0]:
        raise InputError(f"{name} is stochastic and cannot run on an increasing (inversion) grid")


def exprel_tail(z: float, k: int) -> float:
    """``E_k(z) = (e^z - sum_{j<k} z^j/j!) / z^(k-1)`` for k >= 1, accurate for small |z|.

    E_1(z) = e^z - 1, E_2(z) = (e^z - 1 - z)/z, E_3(z) = (e^z - 1 - z - z^2/2)/z^2, ...; these are
    the ``h phi_k(h)`` functions of exponential integrators (DPM-Solver++ App. B, UniPC Alg. 2),
    E_k(z) = z phi_k(z) with phi_k(z) = sum_{j>=0} z^j/(j+k)!.
    """
    if k < 1:
        raise InputError("k >= 1")
    if abs(z) < 0.5:
        # Series z * sum_j z^j/(j+k)!: 30 terms reach double precision for |z| < 0.5.
        term = 1.0 / math.factorial(k)
        total = 0.0
        for j in range(30):
            total += term
            term *= z / (j + k + 1)
        return z * total
    val = math.expm1(z)
    fact = 1.0
    for j in range(1, k):
        fact *= j
        val = val / z - 1.0 / fact
    return val
