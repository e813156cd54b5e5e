"""Rho sweeps: every (sampler, NFE, rule, seed set) generated once, scored, stored, resumable.

Each point of the grid is one run in the results store (:mod:`skiptune.store`), keyed by its full
configuration (model fingerprint, sampler, NFE, grid, rule, mode, seeds, feature network and
reference fingerprint). A sweep interrupted at any point and restarted recomputes only what was not
complete. The summary averages each configuration over its seed sets with a Student-t interval.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from skiptune.generate import SamplingSpec, generate, to_uint8
from skiptune.metrics import (
    FeatureExtractor,
    FeatureSet,
    extract_features,
    fid_from_stats,
    state_dict_sha256,
)
from skiptune.sampling import parse_seeds, sampler_fields
from skiptune.search import Estimate, t_interval
from skiptune.skip import as_rule
from skiptune.store import Metric, RunOutcome, Store, config_key

if TYPE_CHECKING:
    from skiptune.distributed import Dist

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^(layer|const):({_NUM}):({_NUM}):({_NUM})$")
_TEMPLATE = re.compile(rf"\{{({_NUM})\.\.({_NUM}):({_NUM})\}}")


def _frange(lo: float, hi: float, step: float) -> list[float]:
    if step <= 0 or hi < lo:
        raise ValueError(f"rule range needs lo <= hi and step > 0, got {lo}..{hi} step {step}")
    n = int(round((hi - lo) / step))
    if abs(lo + n * step - hi) > 1e-9 * max(1.0, abs(hi)):
        raise ValueError(f"rule range {lo}..{hi} is not a whole number of steps of {step}")
    return [round(lo + i * step, 10) for i in range(n + 1)]


def expand_rules(text: str) -> list[str]:
    """Rules of a sweep, separated by ``;``. Ranges: ``layer:LO:HI:STEP`` (rho_bottom from LO to HI,
    top 1), ``const:LO:HI:STEP``, or a template with one ``{LO..HI:STEP}`` (``ramp:down:{0.6..1:0.1}``).
    Each rule is validated and written in its canonical form."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        m = _RANGE.match(part)
        t = _TEMPLATE.search(part)
        if m:
            name, lo, hi, step = m.group(1), *map(float, m.groups()[1:])
            out += [str(as_rule(f"{name}:{v:g}")) for v in _frange(lo, hi, step)]
        elif t:
            lo, hi, step = map(float, t.groups())
            out += [str(as_rule(part[:t.start()] + f"{v:g}" + part[t.end():])) for v in _frange(lo, hi, step)]
        else:
            out.append(str(as_rule(part)))
    if not out:
        raise ValueError("no rules given")
    return list(dict.fromkeys(out))


def seed_sets(seeds: str, count: int) -> list[str]:
    """``count`` disjoint seed sets: ``seeds`` and copies shifted by its length (``0-99``, ``100-199``, ...)."""
    base = parse_seeds(seeds)
    if count < 1:
        raise ValueError("need at least one seed set")
    span = max(base) - min(base) + 1
    return [",".join(str(s + k * span) for s in base) if not _is_range(base) else
            f"{min(base) + k * span}-{max(base) + k * span}" for k in range(count)]


def _is_range(seeds: list[int]) -> bool:
    return seeds == list(range(seeds[0], seeds[0] + len(seeds)))


def fingerprint(net: nn.Module) -> str:
    """sha256 of a network's state dict (names, shapes and bytes): identifies the weights."""
    return state_dict_sha256(net)


@dataclass
class SweepSpec:
    rules: list[str]
    samplers: list[str]
    nfes: list[int]
    seed_sets: list[str]
    mode: str = "concat"
    grid: str = "edm"
    batch: int = 250
    sampler_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    precision: str = "fp32"

    def points(self) -> list[tuple[str, int, str, int]]:
        return [(s, n, r, k) for s in self.samplers for n in self.nfes for r in self.rules
                for k in range(len(self.seed_sets))]


@dataclass
class SweepRow:
    sampler: str
    nfe: int
    rule: str
    estimate: Estimate

    @property
    def rho_bottom(self) -> float | None:
        r = as_rule(self.rule)
        return getattr(r, "bottom", getattr(r, "rho", 1.0 if self.rule == "none" else None))


def reference_id(ref: FeatureSet, feature: str) -> str:
    """What identifies a FID reference in stored run keys.

    Statistics extracted here from images are named by their provenance (source pixels' fingerprint,
    feature network and its weights, feature, count), so the last bits of a recomputation (another
    thread count, another machine) do not change the key; files without that record (e.g. EDM's
    reference .npz) are named by the bytes of their mean and covariance.
    """
    m = ref.meta
    if m.get("source_fingerprint") and m.get("weights_sha256"):
        text = "|".join(str(m.get(k)) for k in ("source_fingerprint", "extractor", "weights_sha256", "n"))
        return hashlib.sha256(f"{text}|{feature}".encode()).hexdigest()
    st = ref.get(feature)
    return hashlib.sha256(np.asarray(st.mean).tobytes() + np.asarray(st.cov).tobytes()).hexdigest()


def _fid(gen_feats: FeatureSet, ref: FeatureSet, feature: str) -> float:
    return float(fid_from_stats(gen_feats.get(feature), ref.get(feature)))


def point_config(model_id: str, extractor: FeatureExtractor, ref: FeatureSet, *, sampler: str, nfe: int, rule: str,
                 seeds: str, mode: str = "concat", grid: str = "edm", batch: int = 250, precision: str = "fp32",
                 options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The store config of one generated set scored by FID: what :func:`run_sweep` records per point.

    ``skiptune search`` records its evaluations under the same configs, so a search and a sweep on
    one store reuse each other's sets (same seeds, batch, grid, ... -> same images and FID).
    """
    feature = extractor.feature_for("fid")
    cfg = {"kind": "sweep-point", "model": model_id, "grid": grid, "mode": mode, "features": extractor.name,
           "features_sha256": extractor.weights_sha256, "ref": reference_id(ref, feature), "ref_n": ref.get(feature).n,
           "batch": batch}
    if precision != "fp32":  # float32 runs keep the keys they always had
        cfg["precision"] = precision
    return {**cfg, **sampler_fields(sampler), "nfe": nfe, "rule": rule, "seeds": seeds,
            "options": dict(options or {})}


def score_point(net: nn.Module, config: dict[str, Any], extractor: FeatureExtractor, ref: FeatureSet, *,
                device: str = "cpu") -> tuple[float, torch.Tensor, Any]:
    """Generate the set a :func:`point_config` describes and score it: ``(fid, uint8 images, generation)``."""
    sspec = SamplingSpec(config["sampler"], nfe=config["nfe"], grid=config["grid"], options=config["options"])
    g = generate(net, config["seeds"], sspec, rule=config["rule"], mode=config["mode"], batch_size=config["batch"],
                 device=device, precision=config.get("precision", "fp32"))
    imgs = to_uint8(g.images)
    feature = extractor.feature_for("fid")
    fs = extract_features(imgs, extractor, features=[feature], keep=False, batch_size=config["batch"])
    return _fid(fs, ref, feature), imgs, g


def run_sweep(net: nn.Module, spec: SweepSpec, *, store: Store | None, extractor: FeatureExtractor, ref: FeatureSet,
              model_id: str | None = None, progress: bool = True, device: str = "cpu",
              keep_images: dict | None = None, dist: Dist | None = None) -> list[SweepRow]:
    """Run every point of ``spec`` not yet complete in ``store``; return per-configuration summaries.

    ``keep_images``, if given, receives ``{(sampler, nfe, rule): uint8 images}`` of the first seed
    set of each configuration computed in this call (for image grids).

    Under ``torchrun`` (``dist`` with several ranks) the missing points are dealt out to the ranks
    in rounds; after each round rank 0 writes the round's results to the store, which only rank 0
    opens (other ranks pass ``store=None`` and get ``[]`` back). A job killed midway keeps every
    finished round; a restart computes each missing point exactly once.
    """
    model_id = model_id or fingerprint(net)
    points = spec.points()
    configs = [point_config(model_id, extractor, ref, sampler=s, nfe=n, rule=r, seeds=spec.seed_sets[k],
                            mode=spec.mode, grid=spec.grid, batch=spec.batch, precision=spec.precision,
                            options=spec.sampler_options.get(s, {})) for s, n, r, k in points]

    def compute(i: int) -> RunOutcome:
        sampler, nfe, rule, k = points[i]
        fid, imgs, g = score_point(net, configs[i], extractor, ref, device=device)
        if keep_images is not None and k == 0:
            keep_images[(sampler, nfe, rule)] = imgs
        return RunOutcome({"fid": Metric(fid, feature_net=extractor.name, feature_checksum=extractor.weights_sha256,
                                         n_samples=len(g.seeds))},
                          timings={"generate_s": g.seconds, "device": str(device)})

    if dist is not None and dist.enabled:
        _run_rounds(configs, compute, store, dist, progress)
        if not dist.is_main:
            return []
    else:
        if store is None:
            raise ValueError("run_sweep needs a results store")
        bar = tqdm(range(len(points)), desc="sweep", unit="run", disable=not progress)
        for i in bar:
            sampler, nfe, rule, k = points[i]
            bar.set_postfix_str(f"{sampler} nfe={nfe} {rule} set {k}")
            store.run_once(configs[i], lambda cfg, i=i: compute(i))
    values: dict[tuple[str, int, str], list[float]] = {}
    for (sampler, nfe, rule, _), cfg in zip(points, configs, strict=True):
        rec = store.run(config_key(cfg))
        values.setdefault((sampler, nfe, rule), []).append(rec.metrics["fid"].value)
    return [SweepRow(s, n, r, t_interval(v)) for (s, n, r), v in values.items()]


def _run_rounds(configs: list[dict], compute, store: Store | None, d: Dist, progress: bool) -> None:
    """Deal the points missing from the store to the ranks, one point per rank per round."""
    if d.is_main and store is None:
        raise ValueError("rank 0 of a distributed sweep needs the results store")
    todo = [i for i, c in enumerate(configs) if not store.has_run(config_key(c))] if d.is_main else None
    todo = d.broadcast_object(todo)
    rounds = -(-len(todo) // d.world_size)
    bar = tqdm(total=len(todo), desc=f"sweep x{d.world_size}", unit="run", disable=not (progress and d.is_main))
    for r in range(rounds):
        j = r * d.world_size + d.rank
        mine = None
        if j < len(todo):
            started = time.perf_counter()
            out = compute(todo[j])
            mine = (todo[j], out.metrics, {"compute_s": time.perf_counter() - started, **out.timings,
                                           "rank": d.rank, "world_size": d.world_size})
        done = d.gather_object(mine)
        if d.is_main:
            for item in done:
                if item is not None:
                    i, metrics, timings = item
                    store.record_run(configs[i], metrics, timings=timings)
            bar.update(sum(item is not None for item in done))
    bar.close()
    d.barrier()


def best_rows(rows: Sequence[SweepRow]) -> dict[tuple[str, int], tuple[SweepRow, SweepRow | None]]:
    """Per (sampler, NFE): the lowest mean FID row and the baseline (``none``) row."""
    out: dict[tuple[str, int], tuple[SweepRow, SweepRow | None]] = {}
    for s, n in dict.fromkeys((r.sampler, r.nfe) for r in rows):
        group = [r for r in rows if r.sampler == s and r.nfe == n]
        base = next((r for r in group if r.rule in ("none", "layer:1:1", "const:1")), None)
        out[(s, n)] = (min(group, key=lambda r: r.estimate.mean), base)
    return out


def write_best_grids(net: nn.Module, rows: Sequence[SweepRow], out, *, seeds: str = "0-31", grid: str = "edm",
                     mode: str = "concat", device: str = "cpu") -> list:
    """Per (sampler, NFE): baseline and best rule side by side, same seeds (seed 003, Fig. 5); returns the paths."""
    from pathlib import Path

    from skiptune.plots import plot_side_by_side

    paths = []
    for (s, n), (best, base) in best_rows(rows).items():
        panels = []
        for r in dict.fromkeys([base.rule if base else "none", best.rule]):
            g = generate(net, seeds, SamplingSpec(s, nfe=n, grid=grid), rule=r, mode=mode, batch_size=32,
                         device=device)
            panels.append((f"{s} NFE {n}, {r}", to_uint8(g.images)))
        paths.append(plot_side_by_side(panels, Path(out) / f"grid_{s}_{n}.png"))
    return paths
