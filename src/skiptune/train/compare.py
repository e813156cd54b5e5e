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

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from skiptune.generate import SamplingSpec, generate, to_uint8
from skiptune.io.checkpoint import network_config
from skiptune.metrics import FeatureExtractor, FeatureSet, extract_features, fid_from_stats, state_dict_sha256
from skiptune.sampling import sampler_fields
from skiptune.search import Estimate, t_interval
from skiptune.skip import as_rule
from skiptune.store import Metric, RunOutcome, Store
from skiptune.sweep import reference_id, seed_sets

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
        raise ValueError(f"need the same non-zero number of seed sets for both models, got {len(base)} and "
                         f"{len(s2dm)}")
    if any(b <= 0 for b in base):
        raise ValueError("a baseline FID of 0 or below has no relative improvement")
    return t_interval([(b - s) / b for b, s in zip(base, s2dm, strict=True)], confidence)


def _model_id(net: nn.Module) -> dict[str, Any]:
    cfg = network_config(net)
    return {"sha256": state_dict_sha256(net), "class_name": cfg["class_name"], "kwargs": cfg["kwargs"]}


def _ref_id(ref: FeatureSet, feature: str) -> tuple[str, int]:
    return reference_id(ref, feature), int(ref.get(feature).n)


def check_pair(base: nn.Module, s2dm: nn.Module, samplers: Sequence[str], steps: Sequence[int], grid: str,
               rules: Sequence[str] = ("none",)) -> None:
    """ValueError before any work if the two models or the sampling setup cannot be compared."""
    shape = [(getattr(n, "img_channels", None), getattr(n, "img_resolution", None), getattr(n, "label_dim", 0))
             for n in (base, s2dm)]
    if shape[0] != shape[1]:
        raise ValueError(f"the models generate different images (channels, resolution, labels): {shape[0]} vs "
                         f"{shape[1]}")
    if not samplers or not steps:
        raise ValueError("give at least one sampler and one step count")
    for rule in rules:
        as_rule(rule)
    for net in (base, s2dm):
        for sampler in samplers:
            for n in steps:
                SamplingSpec(sampler, steps=n, grid=grid).sigmas(net)


def compare_training(base: nn.Module, s2dm: nn.Module, samplers: Sequence[str], steps: Sequence[int], seeds: str,
                     sets: int, extractor: FeatureExtractor, ref: FeatureSet, store: Store, *,
                     rules: Sequence[str] = ("none",), grid: str = "discrete", mode: str = "concat",
                     batch: int = 250, device: str = "cpu", progress: bool = False,
                     sampler_options: dict[str, dict[str, Any]] | None = None) -> list[CompareRow]:
    """FID of ``base`` and ``s2dm`` for every rule x sampler x steps over ``sets`` seed sets.

    ``seeds`` is the first seed set (e.g. ``0-999``); the others are shifted copies
    (:func:`skiptune.sweep.seed_sets`). Rules (Skip-Tuning, ``none`` = untouched) apply to both models
    alike. Every FID goes through ``store.run_once`` (computed only when missing); the summary table is
    also recorded as the analysis ``compare-training``. Returns one :class:`CompareRow` per
    (rule, sampler, steps), in that nesting order.
    """
    rules = [str(as_rule(r)) for r in rules]
    check_pair(base, s2dm, samplers, steps, grid, rules)
    sets_ = seed_sets(seeds, sets)
    options = sampler_options or {}
    feature = extractor.feature_for("fid")
    ref_id, ref_n = _ref_id(ref, feature)
    models = {"base": (base, _model_id(base)), "s2dm": (s2dm, _model_id(s2dm))}
    common = {"kind": "compare-training-fid", "grid": grid, "mode": mode, "features": extractor.name,
              "features_sha256": extractor.weights_sha256, "ref": ref_id, "ref_n": ref_n, "batch": batch}
    points = [(rule, sampler, n, role, k) for rule in rules for sampler in samplers for n in steps
              for role in ROLES for k in range(len(sets_))]
    fids: dict[tuple[str, str, int, str], list[float]] = {}
    nfes: dict[tuple[str, str, int], int] = {}
    bar = tqdm(points, desc="compare-training", unit="run", disable=not progress)
    for rule, sampler, n, role, k in bar:
        net, model_id = models[role]
        opts = options.get(sampler, {})
        spec = SamplingSpec(sampler, steps=n, grid=grid, options=opts)
        config = {**common, "model": model_id, "rule": rule, **sampler_fields(sampler), "steps": n,
                  "seeds": sets_[k],
                  "options": opts}
        bar.set_postfix_str(f"{role} {rule} {sampler} {n} steps, set {k}")

        def compute(_cfg: dict, net=net, spec=spec, rule=rule, seeds=sets_[k]) -> RunOutcome:
            g = generate(net, seeds, spec, rule=rule, mode=mode, batch_size=batch, device=device)
            fs = extract_features(to_uint8(g.images), extractor, features=[feature], keep=False, batch_size=batch)
            fid = float(fid_from_stats(fs.get(feature), ref.get(feature)))
            return RunOutcome({"fid": Metric(fid, feature_net=extractor.name, feature_checksum=extractor.weights_sha256,
                                             n_samples=len(g.seeds), details={"nfe": g.nfe})},
                              timings={"generate_s": g.seconds})

        record = store.run_once(config, compute)
        fids.setdefault((rule, sampler, n, role), []).append(record.metrics["fid"].value)
        nfes[(rule, sampler, n)] = int(record.metrics["fid"].details.get("nfe", n))
    rows = []
    for rule in rules:
        for sampler in samplers:
            for n in steps:
                b, s = fids[(rule, sampler, n, "base")], fids[(rule, sampler, n, "s2dm")]
                rows.append(CompareRow(rule, sampler, n, nfes[(rule, sampler, n)], t_interval(b), t_interval(s),
                                       relative_improvement(b, s)))
    spec_id = {"base": models["base"][1]["sha256"], "s2dm": models["s2dm"][1]["sha256"], **common, "rules": rules,
               "samplers": list(samplers), "steps": list(steps), "seed_sets": sets_, "options": options}
    key = hashlib.sha256(json.dumps(spec_id, sort_keys=True).encode()).hexdigest()[:24]
    store.record_analysis(ANALYSIS, key, {"spec": spec_id, "rows": [r.to_dict() for r in rows]})
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
