"""A set of extracted features with provenance, cached in one ``.npz`` file.

A :class:`FeatureSet` maps feature names (``'pool'``, ``'logits_unbiased'``, ...) to
:class:`~skiptune.metrics.stats.FeatureStats` and carries the provenance shared by all of them
(extractor name, weights sha256, resize policy, image source, sample count, which feature each
metric uses). Every metric is computed from a feature set, so images go through the network once.

File layout: the *primary* feature (the FID one) is stored at the top level exactly as
:meth:`FeatureStats.save` does (``mu``, ``sigma``, ``n``, ``meta``, optional ``features``), so the
file is also an EDM-compatible reference; other features are stored under ``extra/<name>/<key>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MetricsError
from .stats import FeatureStats, read_meta, read_moments, read_npz, read_statistics_npz, write_npz

_EXTRA = "extra/"


@dataclass
class FeatureSet:
    """Features of one image set. ``stats[name]`` holds that feature's statistics (and raw values
    when kept); ``meta`` the provenance; ``primary`` the feature stored EDM-compatibly."""

    stats: dict[str, FeatureStats]
    meta: dict[str, Any] = field(default_factory=dict)
    primary: str = ""

    def __post_init__(self) -> None:
        if not self.primary and self.stats:
            self.primary = next(iter(self.stats))

    @property
    def n(self) -> int:
        return int(self.meta.get("n", next(iter(self.stats.values())).n if self.stats else 0))

    def feature_for(self, metric: str) -> str:
        """The feature a metric uses, as the extractor recorded it (the primary one for files without
        that record, e.g. EDM references); :meth:`get` then says if it was not extracted."""
        return dict(self.meta.get("metric_features") or {}).get(metric, self.primary)

    def get(self, name: str) -> FeatureStats:
        if name not in self.stats:
            raise MetricsError(
                f"feature {name!r} was not extracted for {self.meta.get('source', 'this set')}; "
                f"available: {sorted(self.stats)}"
            )
        return self.stats[name]

    def raw(self, name: str, metric: str) -> np.ndarray:
        """Raw features for metrics that need them (KID, P/R, MMD, IS), with a clear error if absent."""
        return self.get(name).raw(metric)

    def provenance(self) -> dict[str, Any]:
        return {k: self.meta.get(k) for k in ("extractor", "weights_sha256", "resize")}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the set to one ``.npz`` (see the module docstring)."""
        arrays: dict[str, np.ndarray] = {}
        for name, st in self.stats.items():
            prefix = "" if name == self.primary else f"{_EXTRA}{name}/"
            arrays.update({prefix + key: value for key, value in st.to_arrays().items()})
        meta = {**self.meta, "feature": self.primary, "features_available": sorted(self.stats)}
        return write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSet:
        """Read a file written by :meth:`save`, by :meth:`FeatureStats.save`, or an EDM reference.

        A file that is not a statistics ``.npz`` or holds broken statistics is a
        :class:`~skiptune.metrics.errors.MetricsError` naming it and the problem (see
        :func:`~skiptune.metrics.stats.read_npz` and :func:`~skiptune.metrics.stats.read_moments`).
        """
        data = read_statistics_npz(path)
        meta = read_meta(data, path)
        primary_stats = read_moments(data, meta=meta, source=path)
        meta = dict(meta)
        primary = str(meta.get("feature") or "features")
        stats = {primary: primary_stats}
        extra_names = sorted({k[len(_EXTRA) :].split("/")[0] for k in data if k.startswith(_EXTRA)})
        for name in extra_names:
            if f"{_EXTRA}{name}/mu" not in data or f"{_EXTRA}{name}/sigma" not in data:
                raise MetricsError(f"{path}: feature {name!r} lacks its mu/sigma entries; the file is damaged")
            stats[name] = read_moments(data, f"{_EXTRA}{name}/", meta={**meta, "feature": name}, source=path)
        if primary_stats.has_counts:
            meta.setdefault("n", primary_stats.n)
        meta.setdefault("source", str(path))
        for name, st in stats.items():
            st.meta = {**meta, "feature": name}
        return cls(stats=stats, meta=meta, primary=primary)


def registered_name(recorded: object) -> str | None:
    """The registry name (``--features``) of an extractor name recorded with features: extractors record a
    more precise name than they are registered under (``inception-v3`` records ``inception-v3-tf2015``, or
    ``inception-v3-custom`` for other weights; ``inception-v3-edm-pkl`` records ``inception-v3-tf2015-edm-pkl``;
    ``clip`` records ``clip-<model>``). None if not recorded or not known."""
    if not recorded:
        return None
    from .extractor import available_extractors

    name, known = str(recorded), available_extractors()
    if name in known:
        return name
    if name.startswith("inception-v3") and name.endswith("-edm-pkl") and "inception-v3-edm-pkl" in known:
        return "inception-v3-edm-pkl"
    return next((r for r in sorted(known, key=len, reverse=True) if name.startswith(f"{r}-")), None)


def recorded_extractor(path: str | os.PathLike) -> str | None:
    """The registered feature network (:func:`registered_name`) a statistics ``.npz`` records it was computed
    with; None for files that do not record it (e.g. EDM's references), for ``.npz`` files of images and for
    paths that are no ``.npz`` file (a data set name, a folder). A file named ``.npz`` that is none is an error
    naming it (:func:`~skiptune.metrics.stats.read_npz`)."""
    p = Path(path)
    if p.suffix.lower() != ".npz" or not p.is_file():
        return None
    data = read_npz(p, what="an .npz of statistics or images", keys=("meta",))
    if "mu" not in data.files or "sigma" not in data.files or "meta" not in data:
        return None
    return registered_name(read_meta(data, p).get("extractor"))
