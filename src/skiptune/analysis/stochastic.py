"""Stochastic sampling strength (EDM S_churn) x rho: FID on a grid (seed 003, Sec. 5.5, Fig. 8).

Seed 003, Sec. 5.5: stochastic sampling adds Langevin-like noise of strength tau(t) to the ODE;
Fig. 8 crosses the stochastic strength with the skip coefficient rho and finds that the best
strength decreases as rho decreases, and that a slight tuning (rho = 0.95) improves every strength.

Here the stochastic sampler is EDM's Alg. 2 (``edm_sde``; Karras et al. 2022): at each step i of N
with S_tmin <= t_i <= S_tmax the noise level is raised to t_hat = t_i (1 + gamma),

    gamma = min(S_churn / N, sqrt(2) - 1),

by adding fresh noise of standard deviation sqrt(t_hat^2 - t_i^2) S_noise, before a Heun step
from t_hat. S_churn = 0 is exactly the deterministic Heun sampler. Because gamma saturates at
sqrt(2) - 1, every S_churn >= (sqrt(2) - 1) N gives the same sampler; a grid with two such values
is rejected. All samples of a seed use that seed's own noise stream, so the grid is paired: the
same seeds at every (S_churn, rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
from skiptune.core.stats import paired_difference, significant
from skiptune.sampling import sampler_fields
from skiptune.skip import as_rule
from skiptune.store import Store

NAME = "stochastic"
HELP = "grid of stochastic strength (EDM S_churn) x rho, FID (Fig. 8)"
SAMPLER = "edm_sde"
GAMMA_MAX = math.sqrt(2) - 1


def churn_gamma(s_churn: float, steps: int) -> float:
    """EDM Alg. 2: gamma = min(S_churn / N, sqrt(2) - 1) for a grid of N steps."""
    return min(float(s_churn) / steps, GAMMA_MAX)


def check_churns(churns: Sequence[float], steps: int) -> list[float]:
    """Validated S_churn values: finite, >= 0, distinct, and giving distinct gamma (no two saturated)."""
    vals = [float(c) for c in churns]
    if not vals:
        raise InputError("give at least one S_churn value")
    for c in vals:
        if not math.isfinite(c) or c < 0:
            raise InputError(f"S_churn must be finite and >= 0, got {c}")
    gammas: dict[float, float] = {}
    for c in vals:
        g = churn_gamma(c, steps)
        if g in gammas:
            raise InputError(f"S_churn {gammas[g]:g} and {c:g} give the same gamma = {g:.4g} on {steps} steps "
                             f"(gamma = min(S_churn/N, sqrt(2)-1) saturates at S_churn >= {GAMMA_MAX * steps:.3g}); "
                             "drop one of them")
        gammas[g] = c
    return vals


def rule_rho(rule: str) -> float:
    """The rho of a one-number rule: const rho, layer rho_bottom, 1 for none (NaN otherwise)."""
    r = as_rule(rule)
    if str(r) == "none":
        return 1.0
    return float(getattr(r, "bottom", getattr(r, "rho", math.nan)))


def run_stochastic(net: nn.Module, setup: FidSetup, *, nfe: int = 9, churns: Sequence[float] = (0, 1, 2),
                   rules: Sequence[str] = ("none", "const:0.85", "const:0.7"), s_tmin: float | None = None,
                   s_tmax: float | None = None, s_noise: float | None = None, store: Store | None = None,
                   progress: bool = False) -> AnalysisResult:
    """FID of the EDM stochastic sampler for every (S_churn, rule), paired over the same seed sets.

    Rows per (S_churn, rule): gamma, rho, mean FID with its 95% t interval and the paired
    difference to the untouched network at the same S_churn. The summary names, per rule, the
    S_churn with the lowest FID (the "sweet point" of Fig. 8).
    """
    sigmas = check_sampling(net, SAMPLER, nfe, setup.grid)
    steps = len(sigmas) - 1
    churns = check_churns(churns, steps)
    rules = canonical_rules(rules)
    if "none" not in rules:
        rules = ["none", *rules]
    extra = {k: float(v) for k, v in (("S_tmin", s_tmin), ("S_tmax", s_tmax), ("S_noise", s_noise)) if v is not None}
    for k, v in extra.items():
        if not math.isfinite(v) or v < 0:
            raise InputError(f"{k} must be finite and >= 0, got {v}")
    rows = []
    means: dict[tuple[float, str], float] = {}
    for c in churns:
        est = fid_estimates(net, setup, sampler=SAMPLER, nfe=nfe, rules=rules, options={"S_churn": c, **extra},
                            store=store, progress=progress)
        base = est["none"]
        for r in rules:
            d = paired_difference(est[r], base)
            means[(c, r)] = est[r].mean
            rows.append({"S_churn": c, "gamma": churn_gamma(c, steps), "rule": r, "rho": rule_rho(r),
                         **estimate_columns(est[r]), **estimate_columns(d, "diff"),
                         "vs_none": "-" if r == "none" else significant(d)})
    summary: dict = {}
    for r in rules:
        best = min(churns, key=lambda c, r=r: means[(c, r)])
        summary[f"best_S_churn[{r}]"] = best
        if r != "none":
            summary[f"better_than_none_at_every_S_churn[{r}]"] = all(means[(c, r)] < means[(c, "none")] for c in churns)
    c_best, r_best = min(means, key=means.get)
    summary.update({"best_S_churn": c_best, "best_rule": r_best, "best_fid": means[(c_best, r_best)]})
    config = {**sampler_fields(SAMPLER),
              "nfe": nfe, "steps": steps, "S_churn": churns,
              "rules": rules, "options": extra, **setup.config()}
    notes = [
        f"EDM stochastic sampler (Alg. 2), NFE {nfe} ({steps} steps on the {setup.grid} grid); gamma = "
        f"min(S_churn/{steps}, sqrt(2)-1) per step"
        + ("; " + ", ".join(f"{k} = {v:g}" for k, v in extra.items()) if extra
           else "; S_tmin = 0, S_tmax = inf, S_noise = 1")
        + ". S_churn = 0 is the deterministic Heun sampler.",
        "diff = FID(rule) - FID(untouched) at the same S_churn, paired over the seed sets.",
        setup.note(),
    ]
    return AnalysisResult(NAME, config, rows, summary, notes)
