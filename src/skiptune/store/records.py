"""What the store holds: a run (its config, status, metrics, result payload, context) and its metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from skiptune.core.errors import InputError
from skiptune.store.filters import lookup


@dataclass(frozen=True)
class Metric:
    """One number about a run, with what is needed to trust or reject it.

    ``ci_low``/``ci_high`` bound a ``ci_level`` confidence interval (e.g. 0.95); ``feature_net`` and
    ``feature_checksum`` name the feature extractor and the sha256 of its weights; ``n_samples`` is
    the number of generated samples behind the value; ``details`` any further JSON data.
    """

    value: float
    std: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    feature_net: str | None = None
    feature_checksum: str | None = None
    n_samples: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, obj: float | Metric | Mapping[str, Any]) -> Metric:
        """A Metric from a number, a Metric, or a mapping of its fields (``ci=(lo, hi)`` accepted)."""
        if isinstance(obj, Metric):
            return obj
        if isinstance(obj, Mapping):
            kwargs = dict(obj)
            if "ci" in kwargs:
                lo, hi = kwargs.pop("ci")
                kwargs["ci_low"], kwargs["ci_high"] = lo, hi
            unknown = set(kwargs) - set(cls.__dataclass_fields__)
            if unknown:
                raise InputError(f"unknown metric fields {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
            if "value" not in kwargs:
                raise InputError("a metric mapping needs a 'value'")
            return cls(**kwargs)
        if isinstance(obj, bool) or not isinstance(obj, (int, float)) and not hasattr(obj, "__float__"):
            raise InputError(f"a metric must be a number, a Metric or a mapping, got {obj!r}")
        return cls(float(obj))


@dataclass(frozen=True)
class RunRecord:
    """One stored run: its identity (``key``, ``config``), state, metrics, optional JSON ``result`` (the
    payload of an analysis unit or a finished analysis) and ``context`` (how it was run, not part of
    its identity: model file, loader, device)."""

    key: str
    config: dict[str, Any]
    status: str
    metrics: dict[str, Metric]
    timings: dict[str, Any]
    versions: dict[str, str | None]
    git_revision: str | None
    error: str | None
    attempts: int
    created: float
    updated: float
    result: Any = None
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def get(self, path: str, default: Any = None) -> Any:
        """A config field by dotted path, e.g. ``"sampler_options.order"``."""
        return lookup(self.config, path, default)


@dataclass(frozen=True)
class RunOutcome:
    """What a ``compute_fn`` of :meth:`Store.run_once` may return instead of a plain metrics mapping:
    metrics, timings, a JSON ``result`` payload and the run's ``context``."""

    metrics: Mapping[str, float | Metric | Mapping[str, Any]] = field(default_factory=dict)
    timings: Mapping[str, Any] = field(default_factory=dict)
    result: Any = None
    context: Mapping[str, Any] = field(default_factory=dict)


ComputeFn = Callable[[dict[str, Any]], "Mapping[str, float | Metric | Mapping[str, Any]] | RunOutcome"]
