"""Time order of rho: increasing vs decreasing ramps vs constant at a given rho_0, FID (seed 003, Table 10).

Seed 003, Sec. 5.2 and Fig. 11: "increasing rho" rises linearly from rho_0 at time 0 to 1.0 at
time T; "decreasing rho" falls linearly from 1.0 at time 0 to rho_0 at time T (Table 10: "a linear
increase of rho from rho_0 to 1.0 over time 0 to T"). With a position pos in [0, 1] (0 = time 0, the
data end; 1 = time T, the noise end):

    increasing:  rho = rho_0 + (1 - rho_0) pos
    decreasing:  rho = 1 + (rho_0 - 1) pos
    constant:    rho = rho_0

the same at every skip site. The paper does not say which "time" it means, and the readings differ
a lot on EDM's grid, so the analysis runs the ramps along several axes (``OrderConfig.axes``):

- ``sigma``: pos linear in sigma over the sampler's [sigma_min, sigma_max] (EDM's own convention
  t = sigma; :class:`~skiptune.skip.rules.Ramp`, ``ramp:up:RHO0``). On [0.002, 80], pos < 0.1 for
  sigma < 8, so "increasing" is nearly rho_0 and "decreasing" nearly 1 at every step but the first.
- ``step``: pos = the sampler's step index, (M - 1 - j) / (M - 1) at the j-th of the grid's M positive
  sigmas (:class:`~skiptune.skip.rules.StepRamp`, built from the grid, ``ramp:up:RHO0:step:S0,...``).
- ``time``: the diffusion time the network itself is conditioned on (its noise input c_noise),
  normalised to [0, 1] over the sampler's range: for EDM (c_noise = ln(sigma)/4) and VE
  (ln(sigma/2)) networks that is log sigma (``ramp:up:RHO0:log``); for VP networks (c_noise =
  (M - 1) t(sigma)) the VP SDE time t(sigma) (:class:`~skiptune.skip.rules.VPTimeRamp`,
  ``ramp:up:RHO0:vp``). :func:`model_time_axis` reads which from the network's c_noise.
- ``log`` and ``vp`` name those two explicitly (e.g. the VP time for an EDM network).

This is the reading of "time" we take as the paper's for models of each type: the time that the
model was trained with (for the paper's LDM and U-ViT, discrete VP models, the timestep index, which
this analysis does not offer). The table reports rho at the range ends and the mean rho over the
steps' start sigmas, which shows how far each axis's ramps are from const:rho_0 and from 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.scoring import (
    FidSetup,
    canonical_rules,
    check_sampling,
    estimate_columns,
    fid_estimates,
)
from skiptune.core.errors import InputError
from skiptune.core.stats import Estimate, paired_difference, significant
from skiptune.experiment.generate import SamplingSpec
from skiptune.sampling import sampler_fields
from skiptune.skip import as_rule
from skiptune.skip.rules import StepRamp
from skiptune.store import Store

NAME = "order"
HELP = "increasing vs decreasing ramps of rho (in sigma, step index, model time) vs constant, FID (Table 10)"

ORDERS = ("constant", "increasing", "decreasing")
RAMPS = ("increasing", "decreasing")
#: ramp axes: what "time 0 to T" is read as (see the module doc); ``time`` resolves to ``log`` or ``vp``
AXES = ("sigma", "step", "time", "log", "vp")
AXIS_MEANING = {
    "sigma": "linear in sigma (EDM convention t = sigma)",
    "step": "linear in the sampling step index",
    "log": "linear in log sigma",
    "vp": "linear in the VP SDE time t(sigma)",
}


@dataclass(frozen=True)
class OrderConfig:
    """Every setting of the time-order analysis besides the :class:`FidSetup` (defaults: ``skiptune analyze order``).

    ``sampler`` and ``nfe`` pick the sampling grid; ``rho0`` are the end values of the ramps (one group of
    constant / increasing / decreasing per value); ``axes`` the readings of the paper's "time" (of
    :data:`AXES`; ``time`` is the network's own diffusion time). Validated on construction; whether ``nfe``
    fits the network's grid, and what ``time`` is for the network, are checked by :func:`order_plan`
    (called first by :func:`run_order`).
    """

    sampler: str = "heun"
    nfe: int = 9
    rho0: tuple[float, ...] = (0.7,)
    axes: tuple[str, ...] = ("sigma", "step", "time")

    def __post_init__(self):
        SamplingSpec(self.sampler, nfe=self.nfe)  # a known sampler and an NFE it can hit on its grid
        object.__setattr__(self, "nfe", int(self.nfe))
        try:
            if isinstance(self.rho0, str):
                raise TypeError
            rho0 = tuple(float(r) for r in self.rho0)
        except (TypeError, ValueError):
            raise InputError(f"rho0 must be a sequence of numbers, got {self.rho0!r}") from None
        if not rho0:
            raise InputError("rho0: give at least one rho_0")
        object.__setattr__(self, "rho0", rho0)
        if isinstance(self.axes, str) or not self.axes:
            raise InputError(f"axes must be a non-empty sequence of {', '.join(AXES)}, got {self.axes!r}")
        axes = tuple(dict.fromkeys(str(a) for a in self.axes))
        bad = [a for a in axes if a not in AXES]
        if bad:
            raise InputError(f"unknown ramp axis {bad[0]!r}; use {', '.join(AXES)}")
        object.__setattr__(self, "axes", axes)
        for r in rho0:
            order_rules(r, "sigma")  # rho_0 finite and > 0


def order_rules(rho0: float, axis: str = "sigma", grid: Sequence[float] | None = None) -> dict[str, str]:
    """``{order: rule}`` for one rho_0 along one resolved axis (``sigma``, ``log``, ``vp`` or ``step``; ``step``
    needs the sampler's ``grid``): ``const:rho0`` and the increasing and decreasing ramps, in canonical form."""
    if axis == "step":
        if grid is None:
            raise InputError("the step axis needs the sampler's sigma grid")
        ramps = {o: str(StepRamp(d, rho0, tuple(grid))) for o, d in (("increasing", "up"), ("decreasing", "down"))}
    elif axis in ("sigma", "log", "vp"):
        tail = "" if axis == "sigma" else f":{axis}"
        ramps = {"increasing": f"ramp:up:{rho0:g}{tail}", "decreasing": f"ramp:down:{rho0:g}{tail}"}
    else:
        raise InputError(f"ramp axis must be 'sigma', 'log', 'vp' or 'step' here, got {axis!r}")
    rules = {"constant": f"const:{rho0:g}", **ramps}
    return {k: canonical_rules([v])[0] for k, v in rules.items()}


def model_time_axis(net: nn.Module, sigma_range: tuple[float, float] = (0.002, 80.0)) -> str:
    """The axis of the network's own diffusion time: ``log`` if its noise input c_noise is affine in ln sigma
    (EDM, VE), ``vp`` if affine in the VP SDE time t(sigma) (VP); InputError otherwise (e.g. a discrete-time
    model, whose time is its timestep index). Reads c_noise from ``net.coefficients(sigma)``."""
    coefficients = getattr(net, "coefficients", None)
    if coefficients is None:
        raise InputError(f"a {type(net).__name__} does not show its noise conditioning (no coefficients()), so its "
                         "diffusion time is unknown; use the axes sigma, step, log or vp")
    lo, hi = sigma_range
    sig = torch.logspace(math.log10(lo), math.log10(hi), 9, dtype=torch.float64)
    with torch.no_grad():
        c = torch.as_tensor(coefficients(sig.to(torch.float32).reshape(-1, 1, 1, 1))[3],
                            dtype=torch.float64).flatten()
    t_vp = ((0.01 + 2 * 19.9 * torch.log1p(sig * sig)).sqrt() - 0.1) / 19.9
    for axis, x in (("log", sig.log()), ("vp", t_vp)):
        if c.numel() == len(sig) and _affine(x, c):
            return axis
    raise InputError(f"the noise input of this {type(net).__name__} is neither affine in log sigma nor in the VP time, "
                     "so its diffusion time is not one this analysis knows; use the axes sigma, step, log or vp")


def _affine(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether y = a x + b (a != 0) to float32 precision."""
    a = torch.stack([x, torch.ones_like(x)], 1)
    coef = torch.linalg.lstsq(a, y.unsqueeze(1)).solution.flatten()
    resid = (a @ coef - y).abs().max()
    return bool(coef[0].abs() > 0 and resid <= 1e-4 * (y.abs().max() + 1e-12))


def mean_rho(rule: str, sigmas: Sequence[float], sigma_range: tuple[float, float]) -> float:
    """Mean rho of a site-independent rule over the steps' start sigmas (the grid without its last entry)."""
    r = as_rule(rule).with_sigma_range(*sigma_range)
    starts = list(sigmas[:-1])
    return sum(float(r.factor(0, 1, s)) for s in starts) / len(starts)


@dataclass(frozen=True)
class OrderPlan:
    """The sampler's grid on the network (``sigmas``, ending at 0 or sigma_min), its range, and each configured
    axis resolved (``time`` -> ``log`` or ``vp``)."""

    sigmas: list[float]
    sigma_range: tuple[float, float]
    axes: dict[str, str]

    def rules(self, rho0: float) -> dict[str, dict[str, str]]:
        """``{axis: {order: rule}}`` for one rho_0."""
        return {a: order_rules(rho0, resolved, self.sigmas) for a, resolved in self.axes.items()}


def order_plan(net: nn.Module, config: OrderConfig, grid: str = "edm") -> OrderPlan:
    """The sampler's sigma grid on ``net``, its sigma range (the ramps' ends) and the resolved axes; InputError
    before any sampling if ``config.nfe`` cannot be used on the grid or the network's time is unknown."""
    sigmas = check_sampling(net, config.sampler, config.nfe, grid)
    srange = SamplingSpec(config.sampler, nfe=config.nfe, grid=grid).sigma_range(net)
    axes = {a: (model_time_axis(net, srange) if a == "time" else a) for a in config.axes}
    return OrderPlan(sigmas, srange, axes)


def run_order(net: nn.Module, setup: FidSetup, config: OrderConfig, *, store: Store | None = None,
              progress: bool = False) -> AnalysisResult:
    """FID of constant rho and of increasing and decreasing ramps along each axis, at each rho_0, and untouched.

    Rows per (rho_0, axis, order) with the mean FID, its 95% t interval, the paired difference to the
    untouched network, rho at the range ends and the mean rho over the sampling steps. The summary gives,
    per rho_0 and axis, the paired difference increasing - decreasing (negative: increasing is better).
    """
    plan = order_plan(net, config, setup.grid)
    per = {r0: plan.rules(r0) for r0 in config.rho0}
    rules = ["none", *(r for d in per.values() for a in d.values() for r in a.values())]
    est = fid_estimates(net, setup, sampler=config.sampler, nfe=config.nfe, rules=list(dict.fromkeys(rules)),
                        store=store, progress=progress)
    base = est["none"]
    rows = [{"rho0": 1.0, "axis": "-", "order": "untouched", "rule": "none", "rho_at_sigma_min": 1.0,
             "rho_at_sigma_max": 1.0, "mean_rho_steps": 1.0, **estimate_columns(base),
             **estimate_columns(paired_difference(base, base), "diff"), "vs_none": "-"}]
    summary: dict[str, Any] = {"fid_none": base.mean}
    for r0, by_axis in per.items():
        first = next(iter(by_axis.values()))
        rows.append(_order_row(r0, "-", "constant", first["constant"], est, plan))
        for axis, d in by_axis.items():
            rows += [_order_row(r0, axis, order, d[order], est, plan) for order in RAMPS]
            summary.update(_order_summary(r0, axis, d, est))
    result_config = {**sampler_fields(config.sampler), "nfe": config.nfe, "steps": len(plan.sigmas) - 1,
                     "rho0": list(config.rho0), "axes": dict(plan.axes), "sigma_range": list(plan.sigma_range),
                     **setup.config()}
    return AnalysisResult(NAME, result_config, rows, summary, _notes(config, setup, plan))


def _order_row(r0: float, axis: str, order: str, rule: str, est: dict[str, Estimate], plan: OrderPlan,
               ) -> dict[str, Any]:
    """The row of one (rho_0, axis, order): the rule's rho at the range ends and over the steps, FID, diff."""
    diff = paired_difference(est[rule], est["none"])
    srange = plan.sigma_range
    rr = as_rule(rule).with_sigma_range(*srange)
    return {"rho0": r0, "axis": axis, "order": order, "rule": rule,
            "rho_at_sigma_min": float(rr.factor(0, 1, srange[0])),
            "rho_at_sigma_max": float(rr.factor(0, 1, srange[1])),
            "mean_rho_steps": mean_rho(rule, plan.sigmas, srange), **estimate_columns(est[rule]),
            **estimate_columns(diff, "diff"), "vs_none": significant(diff)}


def _order_summary(r0: float, axis: str, rules: dict[str, str], est: dict[str, Estimate]) -> dict[str, Any]:
    """Per rho_0 and axis: the paired difference increasing - decreasing, its interval, and the best order."""
    ud = paired_difference(est[rules["increasing"]], est[rules["decreasing"]])
    tag = f"{r0:g}, {axis}"
    return {f"up_minus_down[{tag}]": ud.mean,
            f"up_minus_down_ci[{tag}]": f"[{ud.ci_low:.4g}, {ud.ci_high:.4g}]",
            f"best_order[{tag}]": min(ORDERS, key=lambda o: est[rules[o]].mean)}


def _notes(config: OrderConfig, setup: FidSetup, plan: OrderPlan) -> list[str]:
    lo, hi = plan.sigma_range
    axes = "; ".join(f"{a}: {AXIS_MEANING[r]}" + (" (the network's own diffusion time)" if a == "time" else "")
                     for a, r in plan.axes.items())
    return [
        f"{config.sampler}, NFE {config.nfe} ({len(plan.sigmas) - 1} steps on the {setup.grid} grid, sigmas "
        f"{', '.join(f'{s:.4g}' for s in plan.sigmas)}); ramps over the sampler's range [{lo:g}, {hi:g}], the same "
        f"rho at every skip site. Axes: {axes}.",
        "Seed 003 Sec. 5.2 / Table 10: increasing = rho_0 at time 0 rising linearly to 1 at time T, decreasing = 1 "
        "falling to rho_0; the paper does not name the time. Its EDM result (rho_0 0.78, 10 steps): increasing 1.98, "
        "decreasing 1.88; LDM (0.95): 4.67 vs 5.15; U-ViT (0.82): 2.21 vs 2.47.",
        setup.note(),
    ]
