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

NAME = "stochastic"
HELP = "grid of stochastic strength (EDM S_churn) x rho, FID (Fig. 8)"
SAMPLER = "edm_sde"
GAMMA_MAX = math.sqrt(2) - 1
#: the config's names of EDM's sampler options (besides S_churn) -> the sampler's names
_OPTION = {"s_tmin": "S_tmin", "s_tmax": "S_tmax", "s_noise": "S_noise"}


@dataclass(frozen=True)
class StochasticConfig:
    """Every setting of the S_churn x rule grid besides the FidSetup (defaults: ``skiptune analyze stochastic``).

    ``nfe`` evaluations of EDM's stochastic sampler (``edm_sde``); ``churns`` the S_churn values and ``rules``
    the rules of the grid (the untouched network is always measured); ``s_tmin``, ``s_tmax``, ``s_noise``
    EDM's other options (None: the sampler's defaults 0, inf, 1). Validated on construction; whether
    ``nfe`` fits the network's grid and the S_churn give distinct gamma on it is checked by
    :func:`stochastic_plan` (called first by :func:`run_stochastic`).
    """

    nfe: int = 9
    churns: tuple[float, ...] = (0.0, 1.0, 2.0)
    rules: tuple[str, ...] = ("none", "const:0.85", "const:0.7")
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None

    def __post_init__(self):
        SamplingSpec(SAMPLER, nfe=self.nfe)  # a known sampler and an NFE it can hit on its grid
        object.__setattr__(self, "nfe", int(self.nfe))
        object.__setattr__(self, "churns", _churn_values(self.churns))
        object.__setattr__(self, "rules", _rule_texts(self.rules))
        for key in ("s_tmin", "s_tmax", "s_noise"):
            v = getattr(self, key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(f"{key} (EDM {_OPTION[key]}) must be a finite number >= 0 or None, got {v!r}")
            object.__setattr__(self, key, float(v))

    @property
    def measured_rules(self) -> list[str]:
        """``rules`` in canonical form, the untouched network (``none``) first unless given."""
        rules = canonical_rules(self.rules)
        return rules if "none" in rules else ["none", *rules]

    @property
    def options(self) -> dict[str, float]:
        """The sampler options given (``S_tmin``, ``S_tmax``, ``S_noise``), besides S_churn."""
        return {name: getattr(self, key) for key, name in _OPTION.items() if getattr(self, key) is not None}


def _rule_texts(rules: Sequence[str] | str) -> tuple[str, ...]:
    """``rules`` as a tuple (a string is split at ';'), each readable as a rule."""
    if isinstance(rules, str):
        rules = [r for r in (p.strip() for p in rules.split(";")) if r]
    try:
        rules = tuple(rules)
    except TypeError:
        raise InputError(f"rules must be a sequence of rule strings such as 'const:0.85', got {rules!r}") from None
    if not rules:
        raise InputError("rules: give at least one rule (the untouched network is always measured), e.g. 'const:0.85'")
    canonical_rules(rules)  # InputError naming a rule that cannot be read
    return rules


def _churn_values(churns: Sequence[float]) -> tuple[float, ...]:
    """The S_churn values as floats: at least one, each finite, >= 0 and given once."""
    try:
        if isinstance(churns, str):
            raise TypeError
        vals = tuple(float(c) for c in churns)
    except (TypeError, ValueError):
        raise InputError(f"churns must be a sequence of S_churn numbers, got {churns!r}") from None
    if not vals:
        raise InputError("give at least one S_churn value")
    for c in vals:
        if not math.isfinite(c) or c < 0:
            raise InputError(f"S_churn must be finite and >= 0, got {c}")
    dup = sorted({c for c in vals if vals.count(c) > 1})
    if dup:
        raise InputError(f"S_churn {', '.join(f'{c:g}' for c in dup)} given more than once: give each value once")
    return vals


def churn_gamma(s_churn: float, steps: int) -> float:
    """EDM Alg. 2: gamma = min(S_churn / N, sqrt(2) - 1) for a grid of N steps."""
    return min(float(s_churn) / steps, GAMMA_MAX)


def check_churns(churns: Sequence[float], steps: int) -> list[float]:
    """Validated S_churn values: finite, >= 0, distinct, and giving distinct gamma on ``steps`` steps (no two
    saturated)."""
    vals = list(_churn_values(churns))
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


def stochastic_plan(net: nn.Module, config: StochasticConfig, grid: str = "edm") -> int:
    """The number of sampling steps on ``net``'s grid; InputError before any sampling if ``config.nfe`` cannot be
    used on the grid or two S_churn values give the same gamma on it (see :func:`check_churns`)."""
    steps = len(check_sampling(net, SAMPLER, config.nfe, grid)) - 1
    check_churns(config.churns, steps)
    return steps


def run_stochastic(net: nn.Module, setup: FidSetup, config: StochasticConfig, *, store: Store | None = None,
                   progress: bool = False) -> AnalysisResult:
    """FID of the EDM stochastic sampler for every (S_churn, rule) of ``config``, paired over the same seed sets.

    Rows per (S_churn, rule): gamma, rho, mean FID with its 95% t interval and the paired
    difference to the untouched network at the same S_churn. The summary names, per rule, the
    S_churn with the lowest FID (the "sweet point" of Fig. 8).
    """
    steps = stochastic_plan(net, config, setup.grid)
    churns, rules, extra = list(config.churns), config.measured_rules, config.options
    rows = []
    for c in churns:
        est = fid_estimates(net, setup, sampler=SAMPLER, nfe=config.nfe, rules=rules, options={"S_churn": c, **extra},
                            store=store, progress=progress)
        rows += _churn_rows(c, steps, rules, est)
    means = {(row["S_churn"], row["rule"]): row["fid"] for row in rows}
    result_config = {**sampler_fields(SAMPLER), "nfe": config.nfe, "steps": steps, "S_churn": churns,
                     "rules": rules, "options": extra, **setup.config()}
    return AnalysisResult(NAME, result_config, rows, _summary(means, churns, rules), _notes(config, setup, steps))


def _churn_rows(c: float, steps: int, rules: Sequence[str], est: dict[str, Estimate]) -> list[dict[str, Any]]:
    """The rows of one S_churn: per rule gamma, rho, FID and the paired difference to the untouched network."""
    rows = []
    for r in rules:
        d = paired_difference(est[r], est["none"])
        rows.append({"S_churn": c, "gamma": churn_gamma(c, steps), "rule": r, "rho": rule_rho(r),
                     **estimate_columns(est[r]), **estimate_columns(d, "diff"),
                     "vs_none": "-" if r == "none" else significant(d)})
    return rows


def _summary(means: dict[tuple[float, str], float], churns: Sequence[float], rules: Sequence[str]) -> dict[str, Any]:
    """Per rule the S_churn with the lowest FID (and whether it beats the untouched network at every S_churn);
    the best (S_churn, rule) overall."""
    summary: dict[str, Any] = {}
    for r in rules:
        summary[f"best_S_churn[{r}]"] = min(churns, key=lambda c, r=r: means[(c, r)])
        if r != "none":
            summary[f"better_than_none_at_every_S_churn[{r}]"] = all(means[(c, r)] < means[(c, "none")] for c in churns)
    c_best, r_best = min(means, key=means.get)
    summary.update({"best_S_churn": c_best, "best_rule": r_best, "best_fid": means[(c_best, r_best)]})
    return summary


def _notes(config: StochasticConfig, setup: FidSetup, steps: int) -> list[str]:
    extra = config.options
    return [
        f"EDM stochastic sampler (Alg. 2), NFE {config.nfe} ({steps} steps on the {setup.grid} grid); gamma = "
        f"min(S_churn/{steps}, sqrt(2)-1) per step"
        + ("; " + ", ".join(f"{k} = {v:g}" for k, v in extra.items()) if extra
           else "; S_tmin = 0, S_tmax = inf, S_noise = 1")
        + ". S_churn = 0 is the deterministic Heun sampler.",
        "diff = FID(rule) - FID(untouched) at the same S_churn, paired over the seed sets.",
        setup.note(),
    ]
