"""Rho sweeps: every (sampler, NFE, rule, seed set) generated once, scored, stored, resumable.

Each cell of the grid is a :class:`~skiptune.experiment.Point` whose run in the results store is
keyed by the point (model sha256, sampling, rule, mode, seeds, scoring), so sweeps, searches and
analyses share runs. A sweep interrupted at any point and restarted recomputes only what was not
complete. The summary averages each configuration over its seed sets with a Student-t interval.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn
from tqdm.auto import tqdm

from skiptune.core.errors import InputError
from skiptune.core.stats import Estimate, paired_difference, t_interval
from skiptune.experiment import DecoderRef, ModelRef, Point, SamplingSpec, Scored, Scorer, ScoringSpec, outcome, score
from skiptune.sampling import parse_seeds
from skiptune.skip import as_rule, canonical_rule
from skiptune.store import Store

if TYPE_CHECKING:
    from skiptune.distributed import Dist

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^(layer|const):({_NUM}):({_NUM}):({_NUM})$")
_TEMPLATE = re.compile(rf"\{{({_NUM})\.\.({_NUM}):({_NUM})\}}")


def _frange(lo: float, hi: float, step: float) -> list[float]:
    if step <= 0 or hi < lo:
        raise InputError(f"rule range needs lo <= hi and step > 0, got {lo}..{hi} step {step}")
    n = int(round((hi - lo) / step))
    if abs(lo + n * step - hi) > 1e-9 * max(1.0, abs(hi)):
        raise InputError(f"rule range {lo}..{hi} is not a whole number of steps of {step}")
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
        raise InputError("no rules given")
    return list(dict.fromkeys(out))


def seed_sets(seeds: str, count: int) -> list[str]:
    """``count`` disjoint seed sets: ``seeds`` and copies shifted by its length (``0-99``, ``100-199``, ...)."""
    base = parse_seeds(seeds)
    if count < 1:
        raise InputError("need at least one seed set")
    span = max(base) - min(base) + 1
    return [",".join(str(s + k * span) for s in base) if not _is_range(base) else
            f"{min(base) + k * span}-{max(base) + k * span}" for k in range(count)]


def _is_range(seeds: list[int]) -> bool:
    return seeds == list(range(seeds[0], seeds[0] + len(seeds)))


@dataclass
class SweepSpec:
    """A grid of rules x samplers x NFEs x seed sets, with the settings every point shares."""

    rules: list[str]
    samplers: list[str]
    nfes: list[int]
    seed_sets: list[str]
    mode: str = "concat"
    grid: str = "edm"
    batch: int = 250
    sampler_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    precision: str = "fp32"
    end: str | None = None  # where grids end (SamplingSpec.end); None: each sampler's reference convention
    guidance: float | None = None  # classifier-free guidance W (SamplingSpec.guidance)
    cache: str | None = None  # feature-cache policy (skiptune.skip.cache) of every point
    sigma_max: float | None = None  # where sampling starts (SamplingSpec.sigma_max); None: the network's range

    def __post_init__(self):
        self.rules = list(dict.fromkeys(str(canonical_rule(r)) for r in self.rules))

    def points(self, model: ModelRef, scoring: ScoringSpec, decoder: DecoderRef | None = None) \
            -> list[tuple[tuple[str, int, str, int], Point]]:
        """Every ``((sampler, nfe, rule, seed set index), Point)`` of the grid (decoded by ``decoder``, if given)."""
        return [((s, n, r, k), Point(model, SamplingSpec(s, nfe=n, grid=self.grid, end=self.end, guidance=self.guidance,
                                                         sigma_max=self.sigma_max,
                                                         options=dict(self.sampler_options.get(s, {}))),
                                     canonical_rule(r), seeds, scoring, mode=self.mode, batch=self.batch,
                                     precision=self.precision, decoder=decoder, cache=self.cache))
                for s in self.samplers for n in self.nfes for r in self.rules
                for k, seeds in enumerate(self.seed_sets)]


@dataclass
class SweepRow:
    sampler: str
    nfe: int
    rule: str
    estimate: Estimate

    @property
    def rho_bottom(self) -> float | None:
        r = canonical_rule(self.rule)
        return 1.0 if r.is_identity else getattr(r, "bottom", getattr(r, "rho", None))


def run_sweep(net: nn.Module, spec: SweepSpec, *, store: Store | None, scorer: Scorer, model: ModelRef | None = None,
              progress: bool = True, device: str = "cpu", keep_images: dict | None = None,
              dist: Dist | None = None, decoder: Any | None = None) -> list[SweepRow]:
    """Score every point of ``spec`` not yet complete in ``store``; return per-configuration summaries.

    A latent model's samples are decoded to images by ``decoder`` (:class:`~skiptune.io.vae.LatentDecoder`),
    which every point then names.

    ``keep_images``, if given, receives ``{(sampler, nfe, rule): uint8 images}`` of the first seed
    set of each configuration computed in this call (for image grids).

    Under ``torchrun`` (``dist`` with several ranks) the missing points are dealt out to the ranks
    in rounds; after each round rank 0 writes the round's results to the store, which only rank 0
    opens (other ranks pass ``store=None`` and get ``[]`` back). A job killed midway keeps every
    finished round; a restart computes each missing point exactly once.
    """
    model = model or ModelRef.of_network(net)
    labelled = spec.points(model, scorer.spec(), DecoderRef.of(decoder) if decoder is not None else None)

    def compute(i: int) -> Scored:
        (sampler, nfe, rule, k), point = labelled[i]
        scored = score(net, point, scorer, device=device, decoder=decoder)
        if keep_images is not None and k == 0:
            keep_images[(sampler, nfe, rule)] = scored.images
        return scored

    if dist is not None and dist.enabled:
        _run_rounds([p for _, p in labelled], compute, store, dist, progress)
        if not dist.is_main:
            return []
    else:
        if store is None:
            raise InputError("run_sweep needs a results store")
        bar = tqdm(range(len(labelled)), desc="sweep", unit="run", disable=not progress)
        for i in bar:
            (sampler, nfe, rule, k), point = labelled[i]
            bar.set_postfix_str(f"{sampler} nfe={nfe} {rule} set {k}")
            store.run_once(point.to_config(), lambda _cfg, i=i: outcome(compute(i), device=str(device)))
    values: dict[tuple[str, int, str], list[float]] = {}
    for (sampler, nfe, rule, _), point in labelled:
        rec = store.run(point.key())
        values.setdefault((sampler, nfe, rule), []).append(rec.metrics["fid"].value)
    return [SweepRow(s, n, r, t_interval(v)) for (s, n, r), v in values.items()]


def _run_rounds(points: list[Point], compute, store: Store | None, d: Dist, progress: bool) -> None:
    """Deal the points missing from the store to the ranks, one point per rank per round."""
    if d.is_main and store is None:
        raise InputError("rank 0 of a distributed sweep needs the results store")
    todo = [i for i, p in enumerate(points) if not store.has_run(p.key())] if d.is_main else None
    todo = d.broadcast_object(todo)
    rounds = -(-len(todo) // d.world_size)
    bar = tqdm(total=len(todo), desc=f"sweep x{d.world_size}", unit="run", disable=not (progress and d.is_main))
    for r in range(rounds):
        j = r * d.world_size + d.rank
        mine = None
        if j < len(todo):
            started = time.perf_counter()
            out = outcome(compute(todo[j]), compute_s=time.perf_counter() - started, rank=d.rank,
                          world_size=d.world_size)
            mine = (todo[j], out.metrics, dict(out.timings), dict(out.context))
        done = d.gather_object(mine)
        if d.is_main:
            for item in done:
                if item is not None:
                    i, metrics, timings, context = item
                    store.complete_run(points[i].to_config(), metrics, timings=timings, context=context)
            bar.update(sum(item is not None for item in done))
    bar.close()
    d.barrier()


def paired_to_baseline(rows: Sequence[SweepRow]) -> dict[tuple[str, int, str], Estimate]:
    """Per (sampler, NFE, rule): FID minus the untouched network's FID, paired over the same seed sets (the
    interval that carries a comparison: the seed-set noise both share cancels). Empty where there is no
    untouched row to compare with."""
    out = {}
    for (s, n), (_, base) in best_rows(rows).items():
        if base is None:
            continue
        for r in rows:
            if (r.sampler, r.nfe) == (s, n) and len(r.estimate.values) == len(base.estimate.values):
                out[(s, n, r.rule)] = paired_difference(r.estimate, base.estimate)
    return out


def best_rows(rows: Sequence[SweepRow]) -> dict[tuple[str, int], tuple[SweepRow, SweepRow | None]]:
    """Per (sampler, NFE): the lowest mean FID row and the baseline (``none``) row."""
    out: dict[tuple[str, int], tuple[SweepRow, SweepRow | None]] = {}
    for s, n in dict.fromkeys((r.sampler, r.nfe) for r in rows):
        group = [r for r in rows if r.sampler == s and r.nfe == n]
        base = next((r for r in group if canonical_rule(r.rule).is_identity), None)
        out[(s, n)] = (min(group, key=lambda r: r.estimate.mean), base)
    return out
