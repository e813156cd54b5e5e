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
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from skiptune.core.errors import InputError
from skiptune.core.stats import Estimate, t_interval
from skiptune.experiment import Point, SamplingSpec, Scorer, score_stored
from skiptune.experiment.results import record_result
from skiptune.runs.sweep import model_ref, seed_sets
from skiptune.skip import as_rule, canonical_rule
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


def check_pair(base: nn.Module, s2dm: nn.Module, samplers: Sequence[str], steps: Sequence[int], grid: str,
               rules: Sequence[str] = ("none",)) -> None:
    """ValueError before any work if the two models or the sampling setup cannot be compared."""
    shape = [(getattr(n, "img_channels", None), getattr(n, "img_resolution", None), getattr(n, "label_dim", 0))
             for n in (base, s2dm)]
    if shape[0] != shape[1]:
        raise InputError(f"the models generate different images (channels, resolution, labels): {shape[0]} vs "
                         f"{shape[1]}")
    if not samplers or not steps:
        raise InputError("give at least one sampler and one step count")
    for rule in rules:
        as_rule(rule)
    for net in (base, s2dm):
        for sampler in samplers:
            for n in steps:
                SamplingSpec(sampler, steps=n, grid=grid).sigmas(net)


def compare_training(base: nn.Module, s2dm: nn.Module, samplers: Sequence[str], steps: Sequence[int], seeds: str,
                     sets: int, scorer: Scorer, store: Store, *, rules: Sequence[str] = ("none",),
                     grid: str = "discrete", mode: str = "concat", batch: int = 250, device: str = "cpu",
                     progress: bool = False, sampler_options: dict[str, dict[str, Any]] | None = None,
                     sources: tuple[str | None, str | None] = (None, None)) -> list[CompareRow]:
    """FID of ``base`` and ``s2dm`` for every rule x sampler x steps over ``sets`` seed sets.

    ``seeds`` is the first seed set (e.g. ``0-999``); the others are shifted copies
    (:func:`skiptune.runs.sweep.seed_sets`). Rules (Skip-Tuning, ``none`` = untouched) apply to both models
    alike. Every FID is a :class:`~skiptune.experiment.Point` scored through the store (computed only when
    missing, shared with sweeps of the same model); the summary table is recorded as the analysis
    ``compare-training``. Returns one :class:`CompareRow` per (rule, sampler, steps), in that nesting order.
    """
    rules = list(dict.fromkeys(str(canonical_rule(r)) for r in rules))
    check_pair(base, s2dm, samplers, steps, grid, rules)
    sets_ = seed_sets(seeds, sets)
    options = sampler_options or {}
    scoring = scorer.spec()
    models = {role: (net, model_ref(net, src)) for role, net, src in zip(ROLES, (base, s2dm), sources, strict=True)}
    cells = [(rule, sampler, n, role, k) for rule in rules for sampler in samplers for n in steps
             for role in ROLES for k in range(len(sets_))]
    fids: dict[tuple[str, str, int, str], list[float]] = {}
    nfes: dict[tuple[str, str, int], int] = {}
    bar = tqdm(cells, desc="compare-training", unit="run", disable=not progress)
    for rule, sampler, n, role, k in bar:
        net, model = models[role]
        sampling = SamplingSpec(sampler, steps=n, grid=grid, options=dict(options.get(sampler, {})))
        point = Point(model, sampling, rule, sets_[k], scoring, mode=mode, batch=batch)
        bar.set_postfix_str(f"{role} {rule} {sampler} {n} steps, set {k}")
        metric = score_stored(net, point, scorer, store, device=device).metrics["fid"]
        fids.setdefault((rule, sampler, n, role), []).append(metric.value)
        nfes[(rule, sampler, n)] = int(metric.details.get("nfe", n))
    rows = []
    for rule in rules:
        for sampler in samplers:
            for n in steps:
                b, s = fids[(rule, sampler, n, "base")], fids[(rule, sampler, n, "s2dm")]
                rows.append(CompareRow(rule, sampler, n, nfes[(rule, sampler, n)], t_interval(b), t_interval(s),
                                       relative_improvement(b, s)))
    spec_id = {"base": models["base"][1].sha256, "s2dm": models["s2dm"][1].sha256, **scoring.to_config(),
               "grid": grid, "mode": mode, "batch": batch, "rules": rules, "samplers": list(samplers),
               "steps": list(steps), "seed_sets": sets_, "options": options}
    record_result(store, ANALYSIS, spec_id, {"spec": spec_id, "rows": [r.to_dict() for r in rows]})
    return rows


def _fmt(e: Estimate, scale: float = 1.0, unit: str = "") -> str:
    if len(e.values) < 2:
        return f"{e.mean * scale:.3g}{unit}"
    return f"{e.mean * scale:.3g}{unit} ± {e.half_width * scale:.2g}{unit}"


def format_compare_table(rows: Sequence[CompareRow], *, show_rule: bool | None = None) -> str:
    """Markdown: FID of each model (mean ± 95% half-width over seed sets) and the relative improvement."""
    show_rule = any(r.rule != "none" for r in rows) if show_rule is None else show_rule
    head = ["rule"] * show_rule + ["sampler", "steps", "FID base", "FID S²-DM", "relative improvement",
                                   "S²-DM better?"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        imp = r.improvement
        if len(imp.values) < 2:
            verdict = "n/a (1 seed set)"
        elif imp.ci_low > 0:
            verdict = "yes"
        elif imp.ci_high < 0:
            verdict = "no, worse"
        else:
            verdict = "not significantly"
        cells = [r.rule] * show_rule + [r.sampler, str(r.steps), _fmt(r.base), _fmt(r.s2dm),
                                        _fmt(imp, 100, "%"), verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
