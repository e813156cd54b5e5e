"""Automatic search of a rule's scalar rho under a noisy objective (e.g. FID from n samples).

The objective is ``evaluate(rho, n_samples, seed_set) -> value`` (lower is better). ``seed_set``
numbers independent sets of sample seeds; for a fixed ``(n_samples, seed_set)`` the caller must
use the same seeds for every rho (common random numbers), so that the comparison of two rho is
not swamped by seed noise. Its noise is assumed to shrink with n (FID: std ~ 1/sqrt(n)).

The search runs on the lattice ``rho_k = lo + k * step`` (k = 0..K) of ``template`` (a rule with
one ``{rho}``, e.g. ``layer:{rho}`` = rho_bottom of the depth rule, or ``ramp:down:{rho}``), over a
range that may lie on both sides of 1 (seed 003 only uses rho < 1; small models may prefer rho > 1):

1. Coarse rung: every point of spacing ``coarse_step`` (and both range ends) at ``n_min`` samples.
2. Refinement rungs j = 1, 2, ...: the spacing halves (in whole lattice steps) down to ``step``
   and the sample count grows by ``growth`` (capped at ``n_max``); a rung evaluates the points of
   its spacing within one previous spacing of the previous rung's centre. The centre of a rung is
   the vertex of a least-squares parabola through the best point and up to two neighbours on
   each side (clipped to the best point's neighbours; the best point itself if the fit is not
   convex), snapped to the lattice: a fit averages the noise of 5 points, where an argmin would
   follow the noise of one.
3. Final rung at ``n_max`` on seed sets 0..``select_sets``-1 (one by default), each point's value
   being the mean over those sets: the last centre and its two lattice neighbours, then the
   unevaluated neighbour of the best point until the best point is a local minimum of these
   values (at most ``max_walk`` extra points). The best point is the argmin of those values:
   exactly the decision a full grid at ``n_max`` on the same seed sets takes between these points.
   Selecting on several seed sets costs ``select_sets`` times more at this rung and follows the
   seed-set-averaged curve rather than the particular shape of seed set 0.
4. Estimate: the best rule at ``n_max`` on ``seed_sets`` seed sets (0..S-1, reusing the final
   rung's values; ``fresh_ci=True`` uses sets that the selection did not see, ``select_sets``..
   ``select_sets``+S-1, avoiding the optimism of reusing the values it was selected on): mean
   and the Student-t interval ``mean +- t_{(1+c)/2, S-1} s / sqrt(S)``.
   With ``baseline=1.0`` the same seed sets are evaluated for the baseline rule and the paired
   difference (best - baseline) gets its own t interval.

Budget with the defaults on [0.5, 1.5] (coarse 0.1, step 0.05, n_min = n_max/8, growth 2,
max_walk 2; N = n_max): 11 N/8 + 5 N/4 + (3 to 5) N to select, i.e. 27-36 % of the 21 N of a
full grid at N, plus 2 N for the 3-seed-set estimate; with ``select_sets = 3``, 11 N/8 + 5 N/4 +
(9 to 15) N, i.e. 19-28 % of the 63 N of a full grid on 3 seed sets, and the estimate is free
(``benchmarks/search.py`` measures both).

Every distinct ``(rho, n, seed_set)`` is evaluated once; the budget is the sum of ``n`` over these
evaluations (``computed`` excludes values the objective reports as read from a results store). Nothing
is random: the same objective gives the same trace. Ties go to the rho nearer 1, then the smaller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from skiptune.core.errors import InputError
from skiptune.core.stats import Estimate, t_interval
from skiptune.skip.rules import parse_rule

#: ``evaluate(rho, n_samples, seed_set) -> value`` or ``-> (value, cached)``
Objective = Callable[[float, int, int], "float | tuple[float, bool]"]


@dataclass(frozen=True)
class Evaluation:
    """One objective value: ``stage`` is ``coarse``, ``refine-J``, ``final``, ``estimate`` or ``baseline``."""

    stage: str
    rho: float
    rule: str
    n_samples: int
    seed_set: int
    value: float
    cached: bool = False


@dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`search_rho`.

    ``rho``/``rule``: the chosen point; ``value``: its objective at ``n_samples``, the mean over
    the selection's seed sets (the value it was selected on); ``estimate``: its mean and CI over
    seed sets; ``baseline`` / ``difference``: the baseline rule's estimate and the paired
    difference best - baseline (if a baseline was given); ``budget``: samples over all distinct
    evaluations; ``computed``: those not served from the store; ``at_edge``: the best point is an
    end of the range (widen it).
    """

    rho: float
    rule: str
    template: str
    value: float
    estimate: Estimate
    baseline: Estimate | None
    difference: Estimate | None
    n_samples: int
    budget: int
    computed: int
    trace: tuple[Evaluation, ...]
    at_edge: bool
    lo: float
    hi: float
    step: float

    def budget_by_stage(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.trace:
            out[e.stage] = out.get(e.stage, 0) + e.n_samples
        return out

    def summary(self) -> str:
        lines = [f"best rule     {self.rule}   (rho = {self.rho:g} in [{self.lo:g}, {self.hi:g}], step {self.step:g})",
                 f"objective     {self.estimate}   at n = {self.n_samples}"]
        if self.baseline is not None and self.difference is not None:
            lines.append(f"baseline      {self.baseline}")
            lines.append(f"best - base   {self.difference}")
        stages = ", ".join(f"{k} {v}" for k, v in self.budget_by_stage().items())
        lines.append(f"budget        {self.budget} samples in {len(self.trace)} evaluations ({stages}); "
                     f"{self.computed} newly computed")
        if self.at_edge:
            lines.append("warning       the best rho is at an end of the search range: widen the range")
        return "\n".join(lines)


@dataclass(frozen=True)
class GridResult:
    """A full grid at one sample count: ``values[i]`` (mean over ``seed_sets`` sets) belongs to ``rhos[i]``;
    ``rho`` is the argmin."""

    rho: float
    rule: str
    rhos: tuple[float, ...]
    values: tuple[float, ...]
    n_samples: int
    budget: int
    seed_sets: int = 1


# ---------------------------------------------------------------------------------------------------------------------
# Lattice and validation


def _fmt(rho: float) -> str:
    return f"{rho:.12g}"


class _Lattice:
    """``rho_k = lo + k * step`` for k = 0..K, and rule strings from the template."""

    def __init__(self, template: str, lo: float, hi: float, step: float):
        if not isinstance(template, str) or template.count("{rho}") != 1:
            raise InputError(f"the rule template must contain '{{rho}}' exactly once, e.g. 'layer:{{rho}}', "
                             f"got {template!r}")
        for name, v in (("lo", lo), ("hi", hi), ("step", step)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise InputError(f"search {name} must be a finite number, got {v!r}")
        if not 0 < lo < hi:
            raise InputError(f"the search range must satisfy 0 < lo < hi (rho scales a skip tensor), got "
                             f"lo={lo:g}, hi={hi:g}")
        if not step > 0:
            raise InputError(f"search step must be > 0, got {step:g}")
        count = (hi - lo) / step
        self.K = round(count)
        if self.K < 1 or abs(count - self.K) > 1e-6:
            raise InputError(f"the range [{lo:g}, {hi:g}] is not a whole number of steps of {step:g} "
                             f"({count:.4g} steps): adjust lo, hi or step")
        self.template, self.lo, self.hi, self.step = template, float(lo), float(hi), float(step)
        for rho in (self.lo, self.hi):
            self.rule(rho)  # raises a clear ValueError if the template does not make a rule

    def rho(self, k: int) -> float:
        return float(_fmt(self.lo + k * self.step))

    def rule(self, rho: float) -> str:
        text = self.template.replace("{rho}", _fmt(rho))
        try:
            return str(parse_rule(text))
        except ValueError as exc:
            raise InputError(f"the template {self.template!r} gives an invalid rule at rho = {rho:g}: {exc}") from None


def _key(value: float) -> float:
    return value if not math.isnan(value) else math.inf


def _center(points: list[tuple[int, float]], tie: Callable[[int], tuple]) -> int:
    """Lattice index of the smoothed minimum of ``points`` (index, value), sorted by index.

    Least-squares parabola through the best point and up to two neighbours on each side; its
    vertex, clipped to the best point's neighbours, rounded to the lattice. The best point
    itself if fewer than 3 points are available or the fit is not convex.
    """
    best = min(range(len(points)), key=lambda i: (_key(points[i][1]), *tie(points[i][0])))
    lo_i, hi_i = max(0, best - 2), min(len(points), best + 3)
    window = points[lo_i:hi_i]
    if len(window) < 3 or not all(math.isfinite(v) for _, v in window):
        return points[best][0]
    x = np.array([k for k, _ in window], dtype=np.float64)
    x0 = float(x.mean())
    a, b, _ = np.polyfit(x - x0, np.array([v for _, v in window], dtype=np.float64), 2)
    if not a > 0:
        return points[best][0]
    vertex = x0 - float(b) / (2 * float(a))
    left = points[max(best - 1, 0)][0]
    right = points[min(best + 1, len(points) - 1)][0]
    return int(round(min(max(vertex, left), right)))


# ---------------------------------------------------------------------------------------------------------------------
# The search


class _Evaluator:
    """Memoised objective calls with budget accounting."""

    def __init__(self, evaluate: Objective, lattice: _Lattice, callback: Callable[[Evaluation], None] | None):
        if not callable(evaluate):
            raise InputError("evaluate must be a callable evaluate(rho, n_samples, seed_set) -> value")
        self.evaluate, self.lattice, self.callback = evaluate, lattice, callback
        self.memo: dict[tuple[float, int, int], float] = {}
        self.trace: list[Evaluation] = []

    def __call__(self, rho: float, n: int, seed_set: int, stage: str) -> float:
        mkey = (rho, n, seed_set)
        if mkey in self.memo:
            return self.memo[mkey]
        rule = self.lattice.rule(rho)
        out = self.evaluate(rho, n, seed_set)
        value, cached = (float(out[0]), bool(out[1])) if isinstance(out, tuple) else (float(out), False)
        self.memo[mkey] = value
        ev = Evaluation(stage, rho, rule, n, seed_set, value, cached)
        self.trace.append(ev)
        if self.callback is not None:
            self.callback(ev)
        return value

    @property
    def budget(self) -> int:
        return sum(e.n_samples for e in self.trace)

    @property
    def computed(self) -> int:
        return sum(e.n_samples for e in self.trace if not e.cached)


@dataclass(frozen=True)
class SearchConfig:
    """Every setting of :func:`search_rho`, validated on construction.

    Attributes:
        n_max: sample count of the final rung and of the estimate.
        template: rule with one ``{rho}``: ``layer:{rho}`` (rho_bottom, rho_top = 1),
            ``layer:0.6:{rho}``, ``ramp:down:{rho}``, ``const:{rho}``, ...
        lo, hi, step: the lattice; ``hi - lo`` must be a whole number of steps; ``lo > 0``.
        coarse_step: spacing of the coarse rung, a whole number of steps.
        n_min: sample count of the coarse rung (default ``ceil(n_max / 8)``); ``growth``: factor
            from rung to rung.
        seed_sets: seed sets of the final estimate (>= 2 for an interval); ``confidence``: its level.
        baseline: a rho to compare with on the same seed sets (1.0 = the untouched network for
            ``layer:{rho}`` and ramps), or None.
        max_walk: extra final-rung points allowed to reach a local minimum.
        fresh_ci: estimate on seed sets select_sets..select_sets+S-1 instead of 0..S-1.
        select_sets: seed sets (0..select_sets-1) whose mean the final rung selects on.
    """

    n_max: int
    template: str = "layer:{rho}"
    lo: float = 0.5
    hi: float = 1.5
    step: float = 0.05
    coarse_step: float = 0.1
    n_min: int | None = None
    growth: float = 2.0
    seed_sets: int = 3
    confidence: float = 0.95
    baseline: float | None = None
    max_walk: int = 2
    fresh_ci: bool = False
    select_sets: int = 1

    def __post_init__(self):
        lattice = self.lattice()
        m0 = (round(self.coarse_step / lattice.step)
              if isinstance(self.coarse_step, (int, float)) and self.coarse_step > 0 else 0)
        if m0 < 1 or abs(self.coarse_step / lattice.step - m0) > 1e-6 or m0 > lattice.K:
            raise InputError(f"coarse_step must be a whole number of steps ({lattice.step:g}) no wider than the "
                             f"range, got {self.coarse_step!r}")
        if not isinstance(self.n_max, int) or self.n_max < 1:
            raise InputError(f"n_max must be a positive integer, got {self.n_max!r}")
        n_min = math.ceil(self.n_max / 8) if self.n_min is None else self.n_min
        if not isinstance(n_min, int) or not 1 <= n_min <= self.n_max:
            raise InputError(f"n_min must be an integer in [1, n_max = {self.n_max}], got {n_min!r}")
        object.__setattr__(self, "n_min", n_min)
        if not self.growth > 1:
            raise InputError(f"growth must be > 1, got {self.growth!r}")
        if not isinstance(self.seed_sets, int) or self.seed_sets < 1:
            raise InputError(f"seed_sets must be a positive integer, got {self.seed_sets!r}")
        if not 0 < self.confidence < 1:
            raise InputError(f"confidence must lie in (0, 1), got {self.confidence!r}")
        if not isinstance(self.select_sets, int) or isinstance(self.select_sets, bool) or self.select_sets < 1:
            raise InputError(f"select_sets must be a positive integer, got {self.select_sets!r}")
        if self.max_walk < 0:
            raise InputError(f"max_walk must be >= 0, got {self.max_walk!r}")
        if self.baseline is not None:
            lattice.rule(float(self.baseline))

    def lattice(self) -> _Lattice:
        return _Lattice(self.template, self.lo, self.hi, self.step)

    @property
    def coarse_spacings(self) -> list[int]:
        """Lattice spacing of the coarse rung, then halved rung by rung down to 1."""
        spacings = [round(self.coarse_step / self.lattice().step)]
        while spacings[-1] > 1:
            spacings.append(spacings[-1] // 2)
        return spacings


def search_rho(evaluate: Objective, config: SearchConfig | None = None, *,
               callback: Callable[[Evaluation], None] | None = None, **settings: Any) -> SearchResult:
    """Find the rho of the config's template in [lo, hi] that minimises a noisy objective (see the module doc).

    ``evaluate(rho, n_samples, seed_set) -> value``: lower is better, deterministic for given arguments,
    the same seeds for every rho at fixed ``(n_samples, seed_set)``; it may return ``(value, cached)``,
    ``cached`` saying that the value was read from a results store rather than computed (it then does
    not count in ``computed``). ``config`` holds the settings (or give them as keywords, e.g.
    ``search_rho(f, n_max=1000, template="const:{rho}")``); ``callback`` is called with each new
    :class:`Evaluation` (progress display).
    """
    if config is None:
        config = SearchConfig(**settings)
    elif settings:
        raise InputError(f"give the settings either as a SearchConfig or as keywords, not both: {sorted(settings)}")
    search = _Search(config, _Evaluator(evaluate, config.lattice(), callback))
    center = search.refine()
    best, value = search.final(center)
    return search.result(best, value)


class _Search:
    """The rungs of :func:`search_rho` over one lattice and one memoised objective."""

    def __init__(self, config: SearchConfig, ev: _Evaluator):
        self.config, self.ev, self.lattice = config, ev, ev.lattice
        self.K = self.lattice.K

    def tie(self, k: int) -> tuple[float, int]:
        return abs(self.lattice.rho(k) - 1.0), k

    def rung(self, ks: list[int], n: int, stage: str) -> list[tuple[int, float]]:
        return [(k, self.ev(self.lattice.rho(k), n, 0, stage)) for k in sorted(set(ks))]

    def refine(self) -> int:
        """1. the coarse rung over the whole range; 2. refinement rungs (halved spacing, growing sample
        count) around the smoothed minimum; returns the last centre."""
        c, K = self.config, self.K
        spacings = c.coarse_spacings
        center = _center(self.rung(list(range(0, K + 1, spacings[0])) + [K], c.n_min, "coarse"), self.tie)
        for j in range(1, len(spacings)):
            h, wide = spacings[j], spacings[j - 1]
            ks = [center + i * h for i in range(-(wide // h), wide // h + 1)]
            ks += [0] if center - wide < 0 else []
            ks += [K] if center + wide > K else []
            n = min(c.n_max, math.ceil(c.n_min * c.growth**j))
            center = _center(self.rung([k for k in ks if 0 <= k <= K], n, f"refine-{j}"), self.tie)
        return center

    def final(self, center: int) -> tuple[int, float]:
        """3. the final rung at n_max: descend from the centre to a local minimum of the n_max values."""
        c, K = self.config, self.K
        final: dict[int, float] = {}

        def value(k: int) -> float:
            if k not in final:
                final[k] = math.fsum(self.ev(self.lattice.rho(k), c.n_max, s, "final")
                                     for s in range(c.select_sets)) / c.select_sets
            return final[k]

        for k in (center - 1, center, center + 1):
            if 0 <= k <= K:
                value(k)
        walks = 0
        while True:
            best = min(final, key=lambda k: (_key(final[k]), *self.tie(k)))
            todo = [k for k in (best - 1, best + 1) if 0 <= k <= K and k not in final]
            if not todo or walks == c.max_walk:
                break
            value(todo[0])
            walks += 1
        if not math.isfinite(final[best]):
            raise InputError(f"the objective is not finite at any final point ({len(final)} points at n = {c.n_max})")
        return best, final[best]

    def result(self, best: int, value: float) -> SearchResult:
        """4. the estimate over seed sets at the best point (and the paired baseline)."""
        c, ev, lattice = self.config, self.ev, self.lattice
        rho_best = lattice.rho(best)
        sets = list(range(c.select_sets, c.select_sets + c.seed_sets)) if c.fresh_ci else list(range(c.seed_sets))
        best_vals = [ev(rho_best, c.n_max, s, "final" if s < c.select_sets else "estimate") for s in sets]
        base_est = diff_est = None
        if c.baseline is not None:
            base_vals = [ev(float(_fmt(float(c.baseline))), c.n_max, s, "baseline") for s in sets]
            base_est = t_interval(base_vals, c.confidence)
            diff_est = t_interval([a - b for a, b in zip(best_vals, base_vals, strict=True)], c.confidence)
        return SearchResult(rho=rho_best, rule=lattice.rule(rho_best), template=c.template, value=value,
                            estimate=t_interval(best_vals, c.confidence), baseline=base_est, difference=diff_est,
                            n_samples=c.n_max, budget=ev.budget, computed=ev.computed, trace=tuple(ev.trace),
                            at_edge=best in (0, self.K), lo=lattice.lo, hi=lattice.hi, step=lattice.step)


def full_grid(evaluate: Objective, *, n_samples: int, template: str = "layer:{rho}", lo: float = 0.5,
              hi: float = 1.5, step: float = 0.05, seed_set: int = 0, seed_sets: int = 1) -> GridResult:
    """Evaluate every lattice point at ``n_samples`` on seed sets ``seed_set``..``seed_set + seed_sets - 1``;
    the argmin of the means (ties: nearer 1, then smaller).

    The reference that :func:`search_rho` approximates (with ``select_sets = seed_sets``); budget
    ``(K + 1) * n_samples * seed_sets``.
    """
    lattice = _Lattice(template, lo, hi, step)
    if not isinstance(n_samples, int) or n_samples < 1:
        raise InputError(f"n_samples must be a positive integer, got {n_samples!r}")
    if not isinstance(seed_sets, int) or seed_sets < 1:
        raise InputError(f"seed_sets must be a positive integer, got {seed_sets!r}")
    rhos = tuple(lattice.rho(k) for k in range(lattice.K + 1))
    values = tuple(math.fsum(float(evaluate(r, n_samples, s)) for s in range(seed_set, seed_set + seed_sets))
                   / seed_sets for r in rhos)
    best = min(range(len(rhos)), key=lambda i: (_key(values[i]), abs(rhos[i] - 1.0), i))
    return GridResult(rhos[best], lattice.rule(rhos[best]), rhos, values, n_samples,
                      n_samples * len(rhos) * seed_sets, seed_sets)
