"""Standard training vs S²-DM training: FID of two models under the same samplers, steps and seeds.

Each (model, rule, sampler, steps, seed set) is one run in the results store (:mod:`skiptune.store`),
keyed by the model's weights and network config, the sampling setup, the seeds, the feature network
and the reference statistics, so an interrupted comparison resumes and a model's FIDs are reused by
any later comparison that involves it. Both models sample the same seed sets (the same latents), so
the per-set differences are paired.

Relative improvement, as seed 004 reports it: ``(FID_base - FID_s2dm) / FID_base`` (positive = S²-DM
better). It is computed per seed set and summarised by its mean and a Student-t interval over the
sets (the paired interval); the FIDs themselves get the same kind of interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from skiptune.core.checks import integer
from skiptune.core.denoiser import DenoiserInfo
from skiptune.core.errors import InputError
from skiptune.core.stats import Estimate, significant, t_interval
from skiptune.experiment import ModelRef, Point, SamplingSpec, Scorer, score_stored
from skiptune.experiment.results import record_result
from skiptune.runs.sweep import seed_sets
from skiptune.sampling import SAMPLERS
from skiptune.skip import canonical_rule
from skiptune.store import Store

ROLES = ("base", "s2dm")
ANALYSIS = "compare-training"


@dataclass(frozen=True)
class CompareRow:
    """One (rule, sampler, steps): FID of each model and the relative improvement, over seed sets."""

    rule: str
    sampler: str
    steps: int
    nfe: int
    base: Estimate
    s2dm: Estimate
    improvement: Estimate  # (base - s2dm) / base per seed set

    def to_dict(self) -> dict[str, Any]:
        def est(e: Estimate) -> dict[str, Any]:
            ci = [None if np.isnan(v) else v for v in (e.ci_low, e.ci_high)]
            return {"mean": e.mean, "ci": ci, "values": list(e.values), "confidence": e.confidence}

        return {"rule": self.rule, "sampler": self.sampler, "steps": self.steps, "nfe": self.nfe,
                "base": est(self.base), "s2dm": est(self.s2dm), "improvement": est(self.improvement)}


def relative_improvement(base: Sequence[float], s2dm: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and paired Student-t interval of ``(b_i - s_i) / b_i`` over the seed sets i."""
    if len(base) != len(s2dm) or not base:
        raise InputError(f"need the same non-zero number of seed sets for both models, got {len(base)} and "
                         f"{len(s2dm)}")
    if any(b <= 0 for b in base):
        raise InputError("a baseline FID of 0 or below has no relative improvement")
    return t_interval([(b - s) / b for b, s in zip(base, s2dm, strict=True)], confidence)


@dataclass(frozen=True)
class CompareSpec:
    """What compare-training measures: every rule x sampler x step count on ``sets`` seed sets.

    ``seeds`` is the first seed set (e.g. ``0-999``); the others are shifted copies
    (:func:`skiptune.runs.sweep.seed_sets`). Rules (Skip-Tuning, ``none`` = untouched) apply to both
    models alike; ``grid`` defaults to DDIM's uniform timesteps of the discrete-time models.
    """

    samplers: tuple[str, ...] = ("ddim", "ipndm", "deis")
    steps: tuple[int, ...] = (10, 20, 50, 100)
    seeds: str = "0-999"
    sets: int = 3
    rules: tuple[str, ...] = ("none",)
    grid: str = "discrete"
    mode: str = "concat"
    batch: int = 250
    sampler_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "samplers", tuple(self.samplers))
        object.__setattr__(self, "steps", tuple(int(n) for n in self.steps))
        object.__setattr__(self, "rules", tuple(dict.fromkeys(str(canonical_rule(r)) for r in self.rules)))
        if not self.samplers or not self.steps:
            raise InputError("give at least one sampler and one step count")
        unknown = [s for s in self.samplers if s not in SAMPLERS]
        if unknown:
            raise InputError(f"unknown sampler(s) {', '.join(unknown)}; known: {', '.join(SAMPLERS)}")
        for n in self.steps:
            integer(n, minimum=1, what="every step count (--steps)")
        integer(self.sets, minimum=1, what="the number of seed sets (--seed-sets)")
        integer(self.batch, minimum=1, what="batch (--batch)")
        seed_sets(self.seeds, self.sets)  # validates the seeds and the number of sets

    @property
    def seed_sets(self) -> list[str]:
        return seed_sets(self.seeds, self.sets)

    def sampling(self, sampler: str, steps: int) -> SamplingSpec:
        return SamplingSpec(sampler, steps=steps, grid=self.grid, options=dict(self.sampler_options.get(sampler, {})))

    def check(self, base: nn.Module, s2dm: nn.Module) -> None:
        """InputError before any work if the two models cannot be compared under this spec."""
        shape = [(info.shape, info.label_dim) for info in map(DenoiserInfo.of, (base, s2dm))]
        if shape[0] != shape[1]:
            raise InputError(f"the models generate different images ((channels, height, width), classes): {shape[0]} "
                             f"vs {shape[1]}")
        for net in (base, s2dm):
            for sampler in self.samplers:
                for n in self.steps:
                    self.sampling(sampler, n).sigmas(net)

    def to_config(self) -> dict[str, Any]:
        return {"grid": self.grid, "mode": self.mode, "batch": self.batch, "rules": list(self.rules),
                "samplers": list(self.samplers), "steps": list(self.steps), "seed_sets": self.seed_sets,
                "options": dict(self.sampler_options)}


def compare_training(base: nn.Module, s2dm: nn.Module, spec: CompareSpec, scorer: Scorer, store: Store, *,
                     device: str = "cpu", progress: bool = False,
                     sources: tuple[str | None, str | None] = (None, None)) -> list[CompareRow]:
    """FID of ``base`` and ``s2dm`` for every (rule, sampler, steps) of ``spec`` over its seed sets.

    Every FID is a :class:`~skiptune.experiment.Point` scored through the store (computed only when
    missing, shared with sweeps of the same model); the summary table is recorded as the analysis
    ``compare-training``. Returns one :class:`CompareRow` per (rule, sampler, steps), in that nesting order.
    """
    spec.check(base, s2dm)
    scoring = scorer.spec()
    models = {role: (net, ModelRef.of_network(net, src))
              for role, net, src in zip(ROLES, (base, s2dm), sources, strict=True)}
    sets = spec.seed_sets
    cells = [(rule, sampler, n, role, k) for rule in spec.rules for sampler in spec.samplers for n in spec.steps
             for role in ROLES for k in range(len(sets))]
    fids: dict[tuple[str, str, int, str], list[float]] = {}
    nfes: dict[tuple[str, str, int], int] = {}
    bar = tqdm(cells, desc="compare-training", unit="run", disable=not progress)
    for rule, sampler, n, role, k in bar:
        net, model = models[role]
        point = Point(model, spec.sampling(sampler, n), rule, sets[k], scoring, mode=spec.mode, batch=spec.batch)
        bar.set_postfix_str(f"{role} {rule} {sampler} {n} steps, set {k}")
        metric = score_stored(net, point, scorer, store, device=device).metrics["fid"]
        fids.setdefault((rule, sampler, n, role), []).append(metric.value)
        nfes[(rule, sampler, n)] = int(metric.details.get("nfe", n))
    rows = [CompareRow(rule, sampler, n, nfes[(rule, sampler, n)], t_interval(b), t_interval(s),
                       relative_improvement(b, s))
            for rule in spec.rules for sampler in spec.samplers for n in spec.steps
            for b, s in [(fids[(rule, sampler, n, "base")], fids[(rule, sampler, n, "s2dm")])]]
    spec_id = {"base": models["base"][1].sha256, "s2dm": models["s2dm"][1].sha256, **scoring.to_config(),
               **spec.to_config()}
    record_result(store, ANALYSIS, spec_id, {"spec": spec_id, "rows": [r.to_dict() for r in rows]})
    return rows


def _fmt(e: Estimate, scale: float = 1.0, unit: str = "") -> str:
    if len(e.values) < 2:
        return f"{e.mean * scale:.3g}{unit}"
    return f"{e.mean * scale:.3g}{unit} ± {e.half_width * scale:.2g}{unit}"


#: the relative improvement (base - s2dm) / base: an interval above 0 means S²-DM is better
_VERDICT = {"higher": "yes", "lower": "no, worse", "n.s.": "not significantly", "n/a": "n/a (1 seed set)"}


def format_compare_table(rows: Sequence[CompareRow], *, show_rule: bool | None = None) -> str:
    """Markdown: FID of each model (mean ± 95% half-width over seed sets) and the relative improvement."""
    show_rule = any(r.rule != "none" for r in rows) if show_rule is None else show_rule
    head = ["rule"] * show_rule + ["sampler", "steps", "FID base", "FID S²-DM", "relative improvement",
                                   "S²-DM better?"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        imp = r.improvement
        verdict = _VERDICT[significant(imp)]
        cells = [r.rule] * show_rule + [r.sampler, str(r.steps), _fmt(r.base), _fmt(r.s2dm),
                                        _fmt(imp, 100, "%"), verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
