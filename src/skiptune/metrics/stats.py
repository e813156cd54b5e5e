"""Streaming feature statistics: float64 sums with counts, mergeable, saved as EDM-compatible ``.npz``.

For features ``f_1..f_n`` in ``R^d`` we keep ``n``, ``s = sum_i f_i`` and ``S = sum_i f_i f_i^T``
in float64 (as EDM's ``fid.py`` does). Then

    mean  mu    = s / n
    cov   Sigma = (S - n mu mu^T) / (n - 1)        (unbiased, = numpy.cov(rowvar=False))

Sums add, so statistics of disjoint parts merge exactly (up to float64 rounding) in any order,
and a multi-process run reduces them with one all-reduce of ``(n, s, S)``. Each float32 feature
product is exact in float64, so batch size changes only the rounding of the sums (~1e-16 relative).
The plain-sum form loses precision when ``|mu|`` is very large against the spread; Inception
features (non-negative, O(1)) are far from that regime.

File format (``np.savez``): ``mu`` [d] and ``sigma`` [d, d] float64 -- the keys EDM's reference
files use, so EDM ``.npz`` references load here and ours load in EDM -- plus ``n``, a JSON ``meta``
string (extractor name, weights sha256, resize policy, feature name, source) and optionally the
raw ``features`` [n, d] float32 (needed by precision/recall, KID and MMD).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skiptune.core.errors import InputError

from .errors import FeatureDimMismatchError, MetricsError, TooFewSamplesError

FeatureArray = np.ndarray | torch.Tensor


def as_feature_matrix(x: FeatureArray, name: str = "features") -> np.ndarray:
    """A 2-D ``[N, d]`` numpy view of features; rejects other shapes and NaN/inf."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2:
        raise MetricsError(f"{name} must be a 2-D array [N, d], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise MetricsError(f"{name} must be numeric, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise MetricsError(f"{name} contain NaN or inf ({int((~np.isfinite(a)).sum())} values)")
    return a


class FeatureStats:
    """Running mean and covariance of ``d``-dimensional features (see module docstring).

    Args:
        dim: feature dimension ``d``.
        keep_features: also keep the raw features (float32) for metrics that need them.
        meta: provenance recorded in saved files (extractor, weights_sha256, resize, feature, ...).
    """

    def __init__(
        self, dim: int, *, keep_features: bool = False, meta: Mapping[str, Any] | None = None
    ) -> None:
        if dim < 1:
            raise InputError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.n = 0
        self._sum: np.ndarray | None = np.zeros(dim, np.float64)
        self._outer: np.ndarray | None = np.zeros((dim, dim), np.float64)
        self._fixed: tuple[np.ndarray, np.ndarray] | None = None  # (mu, sigma) of files without n
        self.keep_features = keep_features
        self._chunks: list[np.ndarray] = []
        self.meta: dict[str, Any] = dict(meta or {})

    # -- accumulation ---------------------------------------------------------------------------

    def update(self, features: FeatureArray) -> FeatureStats:
        """Add a batch ``[B, d]`` of features. Returns ``self``."""
        a = as_feature_matrix(features)
        if a.shape[1] != self.dim:
            raise FeatureDimMismatchError(f"features have dimension {a.shape[1]}, statistics have {self.dim}")
        if self._sum is None:
            raise MetricsError(
                "these statistics were loaded without sample counts (mu/sigma only); cannot add to them"
            )
        f = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
        self._sum += f.sum(0).numpy()
        self._outer += (f.T @ f).numpy()
        self.n += a.shape[0]
        if self.keep_features:
            self._chunks.append(np.asarray(a, dtype=np.float32).copy())
        return self

    @classmethod
    def from_features(
        cls, features: FeatureArray, *, keep_features: bool = False, meta: Mapping[str, Any] | None = None
    ) -> FeatureStats:
        """Statistics of a whole ``[N, d]`` feature array."""
        a = as_feature_matrix(features)
        return cls(a.shape[1], keep_features=keep_features, meta=meta).update(a)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """A new object with the statistics of both parts (sums and counts add)."""
        if not isinstance(other, FeatureStats):
            return NotImplemented
        if other.dim != self.dim:
            raise FeatureDimMismatchError(f"cannot merge {self.dim}-d and {other.dim}-d statistics")
        if self._sum is None or other._sum is None:
            raise MetricsError("statistics loaded without sample counts (mu/sigma only) cannot be merged")
        mine, theirs = self.meta.get("extractor"), other.meta.get("extractor")
        if mine and theirs and mine != theirs:
            raise FeatureDimMismatchError(f"cannot merge statistics of extractor {mine!r} with {theirs!r}")
        out = FeatureStats(self.dim, keep_features=self.keep_features and other.keep_features, meta=self.meta)
        out.n = self.n + other.n
        out._sum = self._sum + other._sum
        out._outer = self._outer + other._outer
        if out.keep_features:
            out._chunks = [*self._chunks, *other._chunks]
        return out

    __add__ = merge

    # -- results --------------------------------------------------------------------------------

    @property
    def has_counts(self) -> bool:
        return self._sum is not None

    @property
    def mean(self) -> np.ndarray:
        """``mu = s / n`` (float64)."""
        if self._fixed is not None:
            return self._fixed[0]
        if self.n < 1:
            raise TooFewSamplesError("no features were added: the mean needs at least 1 sample")
        return self._sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance ``(S - n mu mu^T) / (n - 1)`` (float64, symmetrised)."""
        if self._fixed is not None:
            return self._fixed[1]
        if self.n < 2:
            raise TooFewSamplesError(
                f"a covariance needs at least 2 samples, got {self.n}; an FID in {self.dim} dimensions "
                f"needs more than {self.dim} samples for a full-rank covariance (papers use 50,000)"
            )
        mu = self.mean
        c = (self._outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return (c + c.T) / 2

    @property
    def features(self) -> np.ndarray | None:
        """The raw features ``[n, d]`` (float32) if kept, else ``None``."""
        if not self.keep_features:
            return None
        if not self._chunks:
            return np.zeros((0, self.dim), np.float32)
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0]

    def raw(self, metric: str) -> np.ndarray:
        """The raw features a metric needs (KID, P/R, MMD, IS), or an error saying how to keep them."""
        feats = self.features
        if feats is None:
            raise MetricsError(
                f"{metric} needs raw features, but {self.meta.get('source', 'these statistics')} "
                f"({self.meta.get('feature', 'features')}) hold only mu/sigma; recompute keeping features "
                "(compute_reference(..., keep_features=True) or FeatureStats(keep_features=True))"
            )
        return feats

    # -- files ----------------------------------------------------------------------------------

    def to_arrays(self, *, include_features: bool | None = None) -> dict[str, np.ndarray]:
        """``mu``, ``sigma``, ``n`` (``-1`` if unknown) and, if kept (or asked), ``features``."""
        arrays: dict[str, np.ndarray] = {
            "mu": self.mean,
            "sigma": self.cov,
            "n": np.asarray(self.n if self.has_counts else -1, np.int64),
        }
        keep = self.keep_features if include_features is None else include_features
        if keep:
            feats = self.features
            if feats is None:
                raise MetricsError(
                    "raw features were not kept (create the statistics with keep_features=True)"
                )
            arrays["features"] = feats
        return arrays

    def save(self, path: str | os.PathLike, *, include_features: bool | None = None) -> Path:
        """Write ``mu``, ``sigma``, ``n``, ``meta`` (JSON) and optionally ``features`` to an ``.npz``."""
        return write_npz(path, self.to_arrays(include_features=include_features), self.meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read statistics saved by :meth:`save` or an EDM reference ``.npz`` (``mu``/``sigma`` only).

        With ``n`` present the sums are rebuilt, ``s = n mu`` and ``S = (n-1) Sigma + n mu mu^T``, so
        loaded statistics merge like fresh ones; without it (EDM files) they are read-only.
        """
        with np.load(path, allow_pickle=False) as data:
            if not {"mu", "sigma"} <= set(data.keys()):
                raise MetricsError(
                    f"{path} is not a statistics file: it lacks 'mu'/'sigma' (keys: {sorted(data.keys())})"
                )
            meta = json.loads(str(data["meta"])) if "meta" in data else {}
            return read_moments(data, meta=meta)

    @classmethod
    def from_moments(
        cls,
        mu: np.ndarray,
        sigma: np.ndarray,
        n: int = -1,
        *,
        features: np.ndarray | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> FeatureStats:
        """Statistics from a mean, an unbiased covariance and a count (``n < 2``: unknown, read-only)."""
        mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
        out = cls(mu.shape[0], keep_features=features is not None, meta=meta)
        if n >= 2:
            out.n = int(n)
            out._sum = n * mu
            out._outer = (n - 1) * sigma + n * np.outer(mu, mu)
        else:
            out.n = max(int(n), 0)
            out._sum = out._outer = None
            out._fixed = (mu, sigma)
        if features is not None:
            out._chunks = [np.asarray(features, np.float32)]
        return out

    def __repr__(self) -> str:
        return f"FeatureStats(dim={self.dim}, n={self.n}, kept={self.keep_features}, meta={self.meta})"


def read_moments(
    data: Mapping[str, np.ndarray], prefix: str = "", meta: Mapping[str, Any] | None = None
) -> FeatureStats:
    """:class:`FeatureStats` from the ``{prefix}mu/sigma/n/features`` entries of an open ``.npz``."""
    mu = np.asarray(data[prefix + "mu"], np.float64)
    sigma = np.asarray(data[prefix + "sigma"], np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricsError(
            f"{prefix}mu has shape {mu.shape} and sigma {sigma.shape}; expected [d] and [d, d]"
        )
    n = int(data[prefix + "n"]) if prefix + "n" in data else -1
    feats = np.asarray(data[prefix + "features"], np.float32) if prefix + "features" in data else None
    return FeatureStats.from_moments(mu, sigma, n, features=feats, meta=meta)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write ``arrays`` plus a JSON ``meta`` string to an uncompressed ``.npz`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays, meta=np.asarray(json.dumps(dict(meta), sort_keys=True, default=str)))
    return path
