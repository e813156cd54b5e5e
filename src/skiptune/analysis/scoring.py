"""FID of several rules on the same seed sets, shared by the ``windows``, ``order`` and ``stochastic`` analyses.

Every (sampler, sampler options, NFE, rule, seed set) is one run of :func:`skiptune.runs.sweep.run_sweep`
in the results store, keyed by its full configuration (model checksum, grid, mode, feature network,
reference statistics, batch), so these analyses share runs with each other and with ``skiptune
sweep``, and an interrupted analysis recomputes only the runs that were not complete.

Estimates. For S disjoint seed sets of n samples each, a rule's FID is the mean over the sets with
the Student-t interval ``mean +- t_{0.975, S-1} s / sqrt(S)`` (s the standard deviation over sets).
A rule is compared with a base rule by the *paired* difference over the same seed sets, d_k =
FID_k(rule) - FID_k(base), which cancels the seed-set noise both share (common random numbers); its
interval is the t interval of the d_k.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from skiptune.core.errors import InputError
from skiptune.core.stats import Estimate
from skiptune.experiment import ModelRef, SamplingSpec, Scorer
from skiptune.runs.sweep import SweepSpec, run_sweep, seed_sets
from skiptune.sampling import parse_seeds
from skiptune.skip import canonical_rule
from skiptune.store import Store


def canonical_rules(rules: Sequence[str] | str) -> list[str]:
    """Rules in canonical string form (``layer:0.7`` -> ``layer:0.7:1``, ``const:1`` -> ``none``), without
    duplicates, in order."""
    if isinstance(rules, str):
        rules = [r for r in (p.strip() for p in rules.split(";")) if r]
    out = [str(canonical_rule(r)) for r in rules]
    if not out:
        raise InputError("no rules given")
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class FidSetup:
    """How FIDs are measured: which model, the scorer (feature network and reference), seed sets, sampling
    grid, mode, batch, device.

    ``seeds`` is the first seed set (e.g. ``0-99``); the further ``seed_sets - 1`` sets are shifted
    copies (``100-199``, ...). Frozen: an analysis that needs other settings builds another setup
    (``dataclasses.replace``).
    """

    scorer: Scorer
    model: ModelRef
    seeds: str = "0-99"
    seed_sets: int = 3
    grid: str = "edm"
    mode: str = "concat"
    batch: int = 250
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self):
        if self.seed_sets < 1:
            raise InputError(f"need at least one seed set, got {self.seed_sets}")
        if self.batch < 1:
            raise InputError(f"batch must be >= 1, got {self.batch}")
        seed_sets(self.seeds, self.seed_sets)  # validates the seeds

    @classmethod
    def for_net(cls, net: nn.Module, scorer: Scorer, **kwargs: Any) -> FidSetup:
        """A setup for a loaded network (its :class:`ModelRef` is computed from the weights)."""
        return cls(scorer, ModelRef.of_network(net), **kwargs)

    @property
    def sets(self) -> list[str]:
        return seed_sets(self.seeds, self.seed_sets)

    @property
    def n_samples(self) -> int:
        return len(parse_seeds(self.sets[0]))

    def config(self) -> dict[str, Any]:
        """The part of an analysis config that this setup determines."""
        return {"model": self.model.sha256, **self.scorer.spec().to_config(), "seed_sets": self.sets,
                "n_per_set": self.n_samples, "grid": self.grid, "mode": self.mode, "batch": self.batch}

    def note(self) -> str:
        n_ref = self.scorer.spec().ref_n
        return (f"FID in the feature space of `{self.scorer.extractor.name}` against {n_ref} reference images; "
                f"{self.seed_sets} seed sets of {self.n_samples} samples ({', '.join(self.sets)}); "
                "mean and 95% Student-t interval over the seed sets; differences are paired over the same seed sets.")


@contextmanager
def results_store(store: Store | None) -> Iterator[Store]:
    """``store`` itself, or a temporary store deleted afterwards (runs are then not kept)."""
    if store is not None:
        yield store
        return
    with tempfile.TemporaryDirectory(prefix="skiptune-analysis-") as tmp, Store(Path(tmp) / "runs.sqlite") as st:
        yield st


def check_sampling(net: nn.Module, sampler: str, nfe: int, grid: str) -> list[float]:
    """The sampler's sigma grid for ``nfe`` evaluations (ValueError naming reachable NFEs otherwise)."""
    return [float(s) for s in SamplingSpec(sampler, nfe=nfe, grid=grid).sigmas(net)]


def fid_estimates(net: nn.Module, setup: FidSetup, *, sampler: str, nfe: int, rules: Sequence[str],
                  options: dict[str, Any] | None = None, store: Store | None = None,
                  progress: bool = False) -> dict[str, Estimate]:
    """FID per rule (canonical rule string -> :class:`Estimate` over the seed sets), via the sweep runner."""
    rules = canonical_rules(rules)
    check_sampling(net, sampler, nfe, setup.grid)
    spec = SweepSpec(rules=rules, samplers=[sampler], nfes=[nfe], seed_sets=setup.sets, mode=setup.mode,
                     grid=setup.grid, batch=setup.batch, sampler_options={sampler: dict(options)} if options else {})
    with results_store(store) as st:
        rows = run_sweep(net, spec, store=st, scorer=setup.scorer, model=setup.model,
                         progress=setup.progress or progress, device=setup.device)
    return {r.rule: r.estimate for r in rows}


def estimate_columns(est: Estimate, prefix: str = "fid") -> dict[str, float]:
    """``{prefix: mean, prefix_ci_low: ..., prefix_ci_high: ...}`` (NaN bounds for a single seed set)."""
    return {prefix: est.mean, f"{prefix}_ci_low": est.ci_low, f"{prefix}_ci_high": est.ci_high}
