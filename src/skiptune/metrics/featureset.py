"""A set of extracted features with provenance, cached in one ``.npz`` file.

A :class:`FeatureSet` maps feature names (``'pool'``, ``'logits_unbiased'``, ...) to
:class:`~skiptune.metrics.stats.FeatureStats` and carries the provenance shared by all of them
(extractor name, weights sha256, resize policy, image source, sample count, which feature each
metric uses). Every metric is computed from a feature set, so images go through the network once.

File layouts (:meth:`FeatureSet.save`):

- ``'skiptune'`` (the default): the *primary* feature (the FID one) is stored at the top level exactly
  as :meth:`FeatureStats.save` does (``mu``, ``sigma``, ``n``, ``meta``, optional ``features``), so the
  file is also an EDM-compatible reference; other features are stored under ``extra/<name>/<key>``.
- ``'edm'``: EDM's ``fid-refs`` layout, nothing more than EDM's ``fid.py`` writes (``np.savez(dest,
  mu=mu, sigma=sigma)``: ``mu`` [d] and ``sigma`` [d, d] float64) plus the provenance as the JSON string
  ``meta`` (a plain unicode array: ``np.load`` reads it without pickles, and EDM's loader, which takes
  ``ref['mu']`` and ``ref['sigma']``, ignores it).

Either way ``meta`` records the feature network (``extractor``, ``weights_sha256``), the ``feature``
and its ``dim``, the network's resize policy (``resize``), the resolution of the images
(``image_size``, [H, W]) and their count (``n``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MetricsError
from .stats import (
    FeatureStats,
    read_meta,
    read_moments,
    read_npz,
    read_statistics_npz,
    recorded_count,
    write_npz,
)

_EXTRA = "extra/"
#: the file layouts :meth:`FeatureSet.save` writes
LAYOUTS = ("skiptune", "edm")


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

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the images the features were extracted from, as recorded; None if not recorded."""
        return recorded_image_size(self.meta)

    @property
    def records_features(self) -> bool:
        """Whether the set records what its features are (feature network or feature name); False for files that
        hold only ``mu``/``sigma`` (EDM's references), whose single feature is named ``'features'``."""
        return bool(self.meta.get("extractor") or self.meta.get("feature"))

    def take_as(self, feature: str) -> FeatureSet:
        """Name the single feature of a set that records none (an EDM reference) ``feature``, in place, so that
        it is found (and compared) as the feature a metric uses; sets that record their features are left as
        they are. Returns ``self``."""
        if self.records_features or len(self.stats) != 1 or feature in self.stats:
            return self
        st = next(iter(self.stats.values()))
        st.meta = {**st.meta, "feature": feature}
        self.stats, self.primary = {feature: st}, feature
        return self

    def save(self, path: str | os.PathLike, *, layout: str = "skiptune") -> Path:
        """Write the set to one ``.npz`` in ``layout`` ``'skiptune'`` or ``'edm'`` (see the module docstring).

        ``'edm'`` writes the primary feature's ``mu`` and ``sigma`` (float64) and ``meta`` only: no sample count
        array (the count is ``meta['n']``), no raw features, no other features.
        """
        if layout not in LAYOUTS:
            raise MetricsError(f"unknown statistics file layout {layout!r}; choose from {', '.join(LAYOUTS)}")
        if not self.stats:
            raise MetricsError("this feature set holds no statistics; nothing to save")
        primary = self.stats[self.primary]
        meta = {**self.meta, "feature": self.primary, "dim": primary.dim}
        if layout == "edm":
            arrays = {"mu": np.asarray(primary.mean, np.float64), "sigma": np.asarray(primary.cov, np.float64)}
            meta["layout"] = "edm"
            if self.n >= 2:
                meta["n"] = self.n
            return write_npz(path, arrays, meta)
        arrays: dict[str, np.ndarray] = {}
        for name, st in self.stats.items():
            prefix = "" if name == self.primary else f"{_EXTRA}{name}/"
            arrays.update({prefix + key: value for key, value in st.to_arrays().items()})
        meta["features_available"] = sorted(self.stats)
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
        primary_stats = read_moments(data, meta=meta, source=path, n=recorded_count(data, meta))
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


def recorded_image_size(meta: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(H, W)`` from a recorded ``image_size`` ([H, W]); None if absent or not two positive integers."""
    size = meta.get("image_size")
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        return None
    return int(size[0]), int(size[1])


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
