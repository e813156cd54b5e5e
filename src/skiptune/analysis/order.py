"""Time order of rho: increasing vs decreasing sigma ramps vs constant at a given rho_0, FID (seed 003, Table 10).

Seed 003, Sec. 5.2 and Fig. 11: "increasing rho" rises linearly from rho_0 at time 0 to 1.0 at
time T; "decreasing rho" falls linearly from 1.0 at time 0 to rho_0 at time T. With EDM's
sigma(t) = t, time 0..T is sigma_min..sigma_max of the sampler, so (pos = (sigma - sigma_min) /
(sigma_max - sigma_min), clipped to [0, 1]):

    increasing (``ramp:up:rho_0``):    rho(sigma) = rho_0 + (1 - rho_0) pos
    decreasing (``ramp:down:rho_0``):  rho(sigma) = 1 + (rho_0 - 1) pos
    constant   (``const:rho_0``):      rho(sigma) = rho_0

the same at every skip site (:class:`~skiptune.skip.rules.Ramp`, range filled with the sampler's
sigma range). ``space='log'`` uses pos in log sigma instead (an option; the paper's ramps are
linear in t). Table 10: EDM prefers decreasing (1.88 vs 1.98 at rho_0 = 0.78, 10 steps), LDM and
UViT increasing.

Linear in sigma on [0.002, 80], the ramps differ from their end values only at large sigma: for
sigma < 8, pos < 0.1, so "increasing" is nearly rho_0 and "decreasing" nearly 1 over most steps.
The table reports the mean rho over the steps' start sigmas to make this visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
from skiptune.store import Store

NAME = "order"
HELP = "increasing vs decreasing sigma ramps of rho vs constant at rho_0, FID (Table 10)"

ORDERS = ("constant", "increasing", "decreasing")


@dataclass(frozen=True)
class OrderConfig:
    """Every setting of the time-order analysis besides the :class:`FidSetup` (defaults: ``skiptune analyze order``).

    ``sampler`` and ``nfe`` pick the sampling grid; ``rho0`` are the end values of the ramps (one group of
    constant / increasing / decreasing per value, in this order); ``space`` is ``sigma`` (linear in sigma,
    the paper) or ``log``. Validated on construction; whether ``nfe`` fits the network's grid is checked
    by :func:`order_plan` (called first by :func:`run_order`).
    """

    sampler: str = "heun"
    nfe: int = 9
    rho0: tuple[float, ...] = (0.7,)
    space: str = "sigma"

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
        self.rules()  # rho_0 finite and > 0, space 'sigma' or 'log'

    def rules(self) -> dict[float, dict[str, str]]:
        """``{rho_0: {order: rule}}`` (see :func:`order_rules`)."""
        return {r: order_rules(r, self.space) for r in self.rho0}


def order_rules(rho0: float, space: str = "sigma") -> dict[str, str]:
    """``{order: rule}`` for one rho_0: ``const:rho0``, ``ramp:up:rho0``, ``ramp:down:rho0`` (``:log``)."""
    tail = ":log" if space == "log" else ""
    if space not in ("sigma", "log"):
        raise InputError(f"ramp space must be 'sigma' or 'log', got {space!r}")
    rules = {"constant": f"const:{rho0:g}", "increasing": f"ramp:up:{rho0:g}{tail}",
             "decreasing": f"ramp:down:{rho0:g}{tail}"}
    return {k: canonical_rules([v])[0] for k, v in rules.items()}


def mean_rho(rule: str, sigmas: Sequence[float], sigma_range: tuple[float, float]) -> float:
    """Mean rho of a site-independent rule over the steps' start sigmas (the grid without its last entry)."""
    r = as_rule(rule).with_sigma_range(*sigma_range)
    starts = list(sigmas[:-1])
    return sum(float(r.factor(0, 1, s)) for s in starts) / len(starts)


def order_plan(net: nn.Module, config: OrderConfig, grid: str = "edm") -> tuple[list[float], tuple[float, float]]:
    """The sampler's sigma grid on ``net`` and its sigma range (the ramps' ends); InputError before any
    sampling if ``config.nfe`` cannot be used on the grid."""
    sigmas = check_sampling(net, config.sampler, config.nfe, grid)
    return sigmas, SamplingSpec(config.sampler, nfe=config.nfe, grid=grid).sigma_range(net)


def run_order(net: nn.Module, setup: FidSetup, config: OrderConfig, *, store: Store | None = None,
              progress: bool = False) -> AnalysisResult:
    """FID of constant, increasing and decreasing rho at each rho_0 of ``config``, and of the untouched network.

    Rows per (rho_0, order) with the mean FID, its 95% t interval, the paired difference to the
    untouched network, and the mean rho over the sampling steps. The summary gives, per rho_0, the
    paired difference increasing - decreasing (negative: increasing is better).
    """
    sigmas, srange = order_plan(net, config, setup.grid)
    per = config.rules()
    rules = ["none", *(r for d in per.values() for r in d.values())]
    est = fid_estimates(net, setup, sampler=config.sampler, nfe=config.nfe, rules=rules, store=store,
                        progress=progress)
    base = est["none"]
    rows = [{"rho0": 1.0, "order": "untouched", "rule": "none", "rho_at_sigma_min": 1.0, "rho_at_sigma_max": 1.0,
             "mean_rho_steps": 1.0, **estimate_columns(base), **estimate_columns(paired_difference(base, base), "diff"),
             "vs_none": "-"}]
    summary: dict[str, Any] = {"fid_none": base.mean}
    for r0, d in per.items():
        rows += [_order_row(r0, order, d[order], est, sigmas, srange) for order in ORDERS]
        summary.update(_order_summary(r0, d, est))
    result_config = {**sampler_fields(config.sampler), "nfe": config.nfe, "steps": len(sigmas) - 1,
                     "rho0": list(config.rho0), "space": config.space, "sigma_range": list(srange),
                     **setup.config()}
    return AnalysisResult(NAME, result_config, rows, summary, _notes(config, setup, sigmas, srange))


def _order_row(r0: float, order: str, rule: str, est: dict[str, Estimate], sigmas: Sequence[float],
               srange: tuple[float, float]) -> dict[str, Any]:
    """The row of one (rho_0, order): the rule's rho at the range ends and over the steps, FID, diff."""
    diff = paired_difference(est[rule], est["none"])
    rr = as_rule(rule).with_sigma_range(*srange)
    return {"rho0": r0, "order": order, "rule": rule,
            "rho_at_sigma_min": float(rr.factor(0, 1, srange[0])),
            "rho_at_sigma_max": float(rr.factor(0, 1, srange[1])),
            "mean_rho_steps": mean_rho(rule, sigmas, srange), **estimate_columns(est[rule]),
            **estimate_columns(diff, "diff"), "vs_none": significant(diff)}


def _order_summary(r0: float, rules: dict[str, str], est: dict[str, Estimate]) -> dict[str, Any]:
    """Per rho_0: the paired difference increasing - decreasing, its interval, and the best order."""
    ud = paired_difference(est[rules["increasing"]], est[rules["decreasing"]])
    return {f"up_minus_down[{r0:g}]": ud.mean,
            f"up_minus_down_ci[{r0:g}]": f"[{ud.ci_low:.4g}, {ud.ci_high:.4g}]",
            f"best_order[{r0:g}]": min(ORDERS, key=lambda o: est[rules[o]].mean)}


def _notes(config: OrderConfig, setup: FidSetup, sigmas: Sequence[float], srange: tuple[float, float]) -> list[str]:
    space = "log sigma" if config.space == "log" else "sigma (= EDM time t)"
    return [
        f"{config.sampler}, NFE {config.nfe} ({len(sigmas) - 1} steps on the {setup.grid} grid); ramps linear in "
        f"{space} over the sampler's range [{srange[0]:g}, {srange[1]:g}]; the same rho at every skip site.",
        "Seed 003 Table 10 (EDM, rho_0 0.78, 10 steps): increasing 1.98, decreasing 1.88; the paper's rho there "
        "may carry its depth profile as well, which a per-sigma ramp alone does not.",
        setup.note(),
    ]
