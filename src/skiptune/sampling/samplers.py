"""The sampler registry and NFE accounting.

Every sampler has the signature ``sample_x(denoiser, x, sigmas, *, extra_args=None, callback=None,
noise=None, denoise_to_zero=False, **options) -> Tensor`` and returns the float64 state at
``sigmas[-1]`` (or D(x, sigmas[-1]) with ``denoise_to_zero``).

NFE (number of denoiser evaluations) for a grid of ``steps`` intervals: one per step for all
samplers except Heun and EDM-SDE, which take two per step except for a final step to sigma = 0
(EDM Alg. 1: NFE = 2N - 1). ``denoise_to_zero`` on a grid ending above 0 adds one.

The ``**options`` a sampler takes are its keyword parameters other than ``extra_args``, ``callback`` and
``noise`` (which the caller supplies); :func:`sampler_options` lists them and :func:`check_sampler_options`
refuses unknown names and values of the wrong type with an :class:`~skiptune.core.errors.InputError`.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, Literal

import torch

from skiptune.core.errors import InputError
from skiptune.sampling._core import Denoiser, check_sigmas
from skiptune.sampling.adams import sample_deis, sample_ipndm
from skiptune.sampling.distilled import sample_consistency
from skiptune.sampling.edm import sample_edm_sde, sample_euler, sample_heun
from skiptune.sampling.exponential import (
    sample_ddim,
    sample_dpmpp,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
    sample_dpmpp_3m_order3,
)
from skiptune.sampling.unipc import sample_unipc

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "edm_sde": sample_edm_sde,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
    "dpmpp_3m_order3": sample_dpmpp_3m_order3,
    "unipc": sample_unipc,
    "deis": sample_deis,
    "ipndm": sample_ipndm,
    "consistency": sample_consistency,
}

#: Denoiser evaluations per step (before the final-step rule).
EVALS_PER_STEP: dict[str, int] = {name: 1 for name in SAMPLERS} | {"heun": 2, "edm_sde": 2}

#: Revisions of samplers whose output on the same inputs changed; configs that identify stored results
#: carry them (:func:`revision_fields`), so results of an older behaviour are never reused.
#: dpmpp_2m/dpmpp_3m/unipc 1: ``lower_order_final`` no longer counts a final step to 0.
#: dpmpp_3m 2: D2 weighted by phi_3 as published (the 2 phi_3 form is now ``dpmpp_3m_order3``).
REVISIONS: dict[str, int] = {"dpmpp_2m": 1, "dpmpp_3m": 2, "unipc": 1}


def revision_fields(name: str) -> dict[str, int]:
    """``{"sampler_rev": n}`` for a revised sampler, else ``{}`` (so other samplers keep their keys)."""
    return {"sampler_rev": REVISIONS[name]} if name in REVISIONS else {}


def sampler_fields(name: str, end: str | None = None) -> dict[str, Any]:
    """The fields that name a sampler in a stored config: ``{"sampler": name}``, its revision, and ``"end"``
    when its grid ends at sigma_min (``end``, default the sampler's :data:`DEFAULT_END`). Grids ending at 0
    carry no ``end``: results stored before the field existed all ended at 0 and keep their keys."""
    get_sampler(name)
    resolved = end if end is not None else DEFAULT_END[name]
    return {"sampler": name, **revision_fields(name), **({"end": resolved} if resolved != "zero" else {})}


#: Where each sampler's grid ends by default, as its reference implementation does (``"zero"``: the
#: grid's last step goes to sigma = 0, ``"sigma_min"``: n solver steps end at sigma_min, NFE = n, no
#: final denoising unless ``denoise_to_zero``). :class:`~skiptune.experiment.generate.SamplingSpec`
#: builds grids this way unless told otherwise.
ENDS = ("zero", "sigma_min")
DEFAULT_END: dict[str, str] = {
    "euler": "zero", "heun": "zero", "edm_sde": "zero",  # EDM's Alg. 1 and 2 (NVlabs/edm generate.py)
    "ddim": "sigma_min",  # zju-pi/diff-sampler (DDIM on the EDM grid)
    "dpmpp_2m": "sigma_min", "dpmpp_3m": "sigma_min", "dpmpp_3m_order3": "sigma_min",  # official DPM-Solver
    "unipc": "sigma_min",  # official UniPC (denoise_to_zero=False) and diff-sampler
    "deis": "sigma_min", "ipndm": "sigma_min",  # diff-sampler
    "consistency": "zero",  # distilled models map noise to data: the grid's 0 ends it
}

#: The implementation each sampler's defaults follow, and how they differ from the other libraries.
REFERENCES: dict[str, str] = {
    "euler": "EDM's Euler step (NVlabs/edm, Heun without the correction); k-diffusion sample_euler: identical",
    "heun": "EDM Alg. 1 (NVlabs/edm generate.py edm_sampler, S_churn=0): N steps ending at 0, NFE = 2N - 1; "
            "k-diffusion sample_heun: identical",
    "edm_sde": "EDM Alg. 2 (NVlabs/edm edm_sampler with S_churn > 0)",
    "ddim": "DDIM eta=0 in sigma space = Euler on the PF-ODE; diff-sampler's DDIM convention (grid ending at "
            "sigma_min); the original DDIM on a discrete model ends at t=0 (grid discrete, which ends at 0)",
    "dpmpp_2m": "official DPM-Solver (multistep, dpmsolver++, lower_order_final below 10 steps, denoise_to_zero "
                "off); k-diffusion: grid ending at 0, no lower-order final steps; diffusers: lower order below 15",
    "dpmpp_3m": "official DPM-Solver / k-diffusion / diffusers 3M weights (phi_3 on D2, global order 2), "
                "official step convention",
    "dpmpp_3m_order3": "3M with D2 weighted by 2 phi_3 (global order 3); no other library has it",
    "unipc": "official UniPC (wl-zhao/UniPC, variant bh1, corrector except at the last step, lower_order_final "
             "for every step count, denoise_to_zero off): n steps ending at sigma_min, NFE = n",
    "deis": "DEIS tAB (zju-pi/diff-sampler 'tab', order 3): grid ending at sigma_min; on a grid ending at 0 the "
            "last step is an Adams-Bashforth step, not x = D",
    "ipndm": "iPNDM (zju-pi/diff-sampler, order 4): grid ending at sigma_min; on a grid ending at 0 the last "
             "step is an Adams-Bashforth step, not x = D",
    "consistency": "multistep consistency sampling (Song et al. 2023, Alg. 1; openai/consistency_models), "
                   "eps = 0.002; with nfe=1 one-step generation x = D(sigma_max z, sigma_max)",
}


#: Samplers that never draw noise (usable for ODE inversion). DDIM only with eta = 0.
DETERMINISTIC: frozenset[str] = frozenset(SAMPLERS) - {"edm_sde", "consistency"}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    if name not in SAMPLERS:
        raise InputError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


#: Keyword arguments every sampler takes that the caller (not the user) supplies.
CALLER_ARGUMENTS = ("extra_args", "callback", "noise")
#: Samplers that forward ``**opts`` to another function, with the arguments they fix themselves.
_FORWARDS: dict[str, tuple[Callable[..., torch.Tensor], tuple[str, ...]]] = {
    "dpmpp_2m": (sample_dpmpp, ("order", "third_order_weight")),
    "dpmpp_3m": (sample_dpmpp, ("order", "third_order_weight")),
    "dpmpp_3m_order3": (sample_dpmpp, ("order", "third_order_weight")),
}


@cache
def sampler_options(name: str) -> dict[str, tuple[Any, Any]]:
    """``{option: (type annotation, default)}`` of the options sampler ``name`` takes (see the module docstring)."""
    fn, fixed = _FORWARDS.get(name, (get_sampler(name), ()))
    hints = typing.get_type_hints(fn)
    return {p.name: (hints.get(p.name, Any), p.default) for p in inspect.signature(fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name not in CALLER_ARGUMENTS and p.name not in fixed}


def _type_problem(value: Any, annotation: Any) -> str | None:
    """None if ``value`` fits ``annotation`` (bool, int, float, str or a Literal), else what was expected."""
    if typing.get_origin(annotation) is Literal:
        allowed = typing.get_args(annotation)
        return None if value in allowed and type(value) in {type(a) for a in allowed} else \
            f"one of {', '.join(map(str, allowed))}"
    if annotation is bool:
        return None if isinstance(value, bool) else "true or false (bool)"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer (int)"
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        return None if ok else "a number (float)"
    if annotation is str:
        return None if isinstance(value, str) else "a string (str)"
    return None  # other annotations are the sampler's own business


def check_sampler_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse options sampler ``name`` does not take, or values of the wrong type, naming the option, what
    the sampler takes and the type it expects (:class:`~skiptune.core.errors.InputError`)."""
    known = sampler_options(name)
    takes = ", ".join(f"{k} (default {_show(d)})" for k, (_, d) in known.items()) or "none"
    for key, value in options.items():
        if key not in known:
            raise InputError(f"sampler {name!r} has no option {key!r}; the options it takes: {takes}")
        problem = _type_problem(value, known[key][0])
        if problem is not None:
            raise InputError(f"sampler option {key}={value!r} of {name!r}: expected {problem}")


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def sample(name: str, denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, **opts: Any) -> torch.Tensor:
    """Run the sampler called ``name`` (see :data:`SAMPLERS`); options are checked first
    (:func:`check_sampler_options`), the caller's arguments (``extra_args``, ``callback``, ``noise``) passed on."""
    check_sampler_options(name, {k: v for k, v in opts.items() if k not in CALLER_ARGUMENTS})
    return get_sampler(name)(denoiser, x, sigmas, **opts)


def nfe_for_steps(name: str, steps: int, *, final_zero: bool = True, denoise_to_zero: bool = False) -> int:
    """Exact NFE of ``name`` on a grid with ``steps`` intervals, ending at 0 iff ``final_zero``."""
    get_sampler(name)
    if int(steps) != steps or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps}")
    per = EVALS_PER_STEP[name]
    nfe = per * steps - (1 if (per == 2 and final_zero) else 0)
    return nfe + (1 if (denoise_to_zero and not final_zero) else 0)


def nfe_for_sigmas(name: str, sigmas: torch.Tensor, *, denoise_to_zero: bool = False) -> int:
    """Exact NFE of ``name`` on the given grid."""
    s = check_sigmas(sigmas)
    return nfe_for_steps(name, len(s) - 1, final_zero=s[-1] == 0, denoise_to_zero=denoise_to_zero)


def steps_for_nfe(name: str, nfe: int, *, final_zero: bool = True, denoise_to_zero: bool = False) -> int:
    """The number of steps (grid intervals) giving exactly ``nfe`` evaluations.

    Raises ValueError naming the reachable NFEs when ``name`` cannot hit ``nfe`` exactly (e.g. Heun on
    a grid ending at 0 only reaches odd NFEs 1, 3, 5, ...).
    """
    if int(nfe) != nfe or nfe < 1:
        raise InputError(f"nfe must be an integer >= 1, got {nfe}")
    for steps in range(1, int(nfe) + 1):
        if nfe_for_steps(name, steps, final_zero=final_zero, denoise_to_zero=denoise_to_zero) == nfe:
            return steps
    reachable = [nfe_for_steps(name, k, final_zero=final_zero, denoise_to_zero=denoise_to_zero) for k in range(1, 6)]
    grid = "ending at 0" if final_zero else "ending above 0" + (" plus denoise_to_zero" if denoise_to_zero else "")
    hint = ""
    if EVALS_PER_STEP[name] == 2:
        hint = " (2 per step; use a grid ending above 0, or denoise_to_zero, for the other parity)"
    raise InputError(
        f"sampler {name!r} cannot use exactly {nfe} NFE on a grid {grid}; it can use "
        f"{', '.join(map(str, reachable))}, ... (steps 1..5){hint}"
    )
