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
string (extractor name, weights sha256, resize policy, feature name, image size, source) and optionally
the raw ``features`` [n, d] float32 (needed by precision/recall, KID and MMD). A file of EDM's own
layout holds only ``mu`` and ``sigma`` (see :mod:`skiptune.metrics.featureset` for the ``'edm'`` layout
skiptune writes: those two and ``meta``).
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skiptune.core.errors import InputError, MissingFileError

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
                f"({self.meta.get('feature', 'features')}) hold only mu/sigma; recompute them keeping the raw "
                "features (`skiptune ref --keep-features`; in Python compute_reference(..., keep_features=True) "
                "or FeatureStats(keep_features=True))"
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
        loaded statistics merge like fresh ones (also when only ``meta`` records ``n``, as in skiptune's ``'edm'``
        layout); without a count (EDM's files) they are read-only. A file that
        is not an ``.npz``, lacks ``mu``/``sigma`` or holds broken statistics (NaN/inf, a non-symmetric
        covariance, ...) is a :class:`MetricsError` naming the file and the problem.
        """
        data = read_statistics_npz(path)
        meta = read_meta(data, path)
        return read_moments(data, meta=meta, source=path, n=recorded_count(data, meta))

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


def read_statistics_npz(path: str | os.PathLike) -> NpzContents:
    """All arrays of a statistics ``.npz``; a :class:`MetricsError` if it is none or lacks ``mu``/``sigma``."""
    data = read_npz(path, what="a statistics .npz (mu, sigma)")
    if "mu" not in data or "sigma" not in data:
        hint = "; it holds images: pass it as images, not as statistics" if {"images", "arr_0"} & set(data) else ""
        raise MetricsError(f"{path} is not a statistics file: it lacks 'mu'/'sigma' (keys: {sorted(data)}){hint}")
    return data


def read_meta(data: Mapping[str, np.ndarray], path: str | os.PathLike) -> dict[str, Any]:
    """The JSON ``meta`` entry of a statistics file (``{}`` when absent), checked to be a JSON object."""
    if "meta" not in data:
        return {}
    try:
        meta = json.loads(str(data["meta"]))
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise MetricsError(f"{path}: its 'meta' entry is not a JSON object; the file is damaged (recompute it)")
    return meta


def recorded_count(data: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> int | None:
    """The sample count of a file without an ``n`` array (skiptune's ``'edm'`` layout), as its ``meta`` records
    it; None when the file has ``n`` or ``meta`` records no count of at least 2."""
    n = meta.get("n")
    if "n" in data or isinstance(n, bool) or not isinstance(n, int) or n < 2:
        return None
    return n


def read_moments(
    data: Mapping[str, np.ndarray],
    prefix: str = "",
    meta: Mapping[str, Any] | None = None,
    *,
    source: str | os.PathLike = "statistics",
    n: int | None = None,
) -> FeatureStats:
    """:class:`FeatureStats` from the ``{prefix}mu/sigma/n/features`` entries of an open ``.npz``.

    The statistics are checked before use (``source`` names them in errors): ``mu`` [d] and ``sigma``
    [d, d] finite, ``sigma`` symmetric with a non-negative diagonal, ``n`` at least 2 (or absent), raw
    ``features`` [n, d] finite. Broken statistics raise :class:`MetricsError` here, when the file is read,
    instead of a NaN FID later. ``n`` is the sample count to use when the file has no ``{prefix}n`` entry
    (a file in EDM's layout whose ``meta`` records it); None: unknown.
    """
    where = f"{source}: {prefix}" if prefix else f"{source}: "
    broken = ": these statistics are broken; recompute them (e.g. `skiptune ref`)"
    mu = np.asarray(data[prefix + "mu"])
    sigma = np.asarray(data[prefix + "sigma"])
    for name, a in (("mu", mu), ("sigma", sigma)):
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise MetricsError(f"{where}{name} has dtype {a.dtype}, not numbers{broken}")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if mu.ndim != 1 or mu.shape[0] < 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricsError(f"{where}mu has shape {mu.shape} and sigma {sigma.shape}; expected [d] and [d, d]{broken}")
    for name, a in (("mu", mu), ("sigma", sigma)):
        bad = int((~np.isfinite(a)).sum())
        if bad:
            raise MetricsError(f"{where}{name} has {bad} NaN/inf value(s) of {a.size}{broken}")
    scale = float(np.abs(sigma).max(initial=0.0))
    asym = float(np.abs(sigma - sigma.T).max(initial=0.0))
    if asym > 1e-6 * scale + 1e-12:
        raise MetricsError(f"{where}sigma is not symmetric (max |sigma - sigma^T| = {asym:.3g}), so it is not a "
                           f"covariance{broken}")
    low = float(np.diag(sigma).min())
    if low < -1e-9 * scale - 1e-12:
        raise MetricsError(f"{where}sigma has a negative variance on its diagonal ({low:.3g}), so it is not a "
                           f"covariance{broken}")
    n = -1 if n is None or n < 2 else int(n)
    if prefix + "n" in data:
        raw_n = np.asarray(data[prefix + "n"])
        if raw_n.shape != () or not np.issubdtype(raw_n.dtype, np.integer) or not (int(raw_n) == -1 or raw_n >= 2):
            raise MetricsError(f"{where}n is {raw_n.tolist()!r}; expected a sample count >= 2 (or -1 for "
                               f"unknown){broken}")
        n = int(raw_n)
    feats = None
    if prefix + "features" in data:
        feats = np.asarray(data[prefix + "features"])
        want = (n if n >= 2 else feats.shape[0], mu.shape[0])
        if feats.ndim != 2 or feats.shape != want:
            raise MetricsError(f"{where}features have shape {feats.shape}, expected {list(want)} (n x d){broken}")
        if not np.isfinite(feats).all():
            raise MetricsError(f"{where}features hold {int((~np.isfinite(feats)).sum())} NaN/inf value(s){broken}")
        feats = feats.astype(np.float32)
    return FeatureStats.from_moments(mu, sigma, n, features=feats, meta=meta)


# -- reading files ------------------------------------------------------------------------------------


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file itself (fetch it with `git lfs pull`)"),
)


def describe_contents(path: str | os.PathLike) -> str:
    """What a file holds, judged from its first bytes, for error messages (``'an empty file (0 bytes)'``,
    ``"a text file (it starts with 'hello')"``, ``'a ZIP archive'``, ...)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        return f"a file that cannot be read ({exc.strerror or exc})"
    if not head:
        return "an empty file (0 bytes)"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if len(head) > 9 and head[8:10] == b'{"':
        return "a safetensors file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a download that saved an error or login page?)"
    text = head.decode("utf-8", errors="ignore")
    if text and sum(c.isprintable() or c in "\t\r\n" for c in text) >= 0.95 * len(text):
        first = text.splitlines()[0][:40] if text.strip() else text[:40]
        return f"a text file (it starts with {first!r})"
    return f"binary data of an unknown format (first bytes {head[:8].hex(' ')})"


class NpzContents(dict):
    """The arrays read from an ``.npz`` (name -> array); ``files`` lists every array the archive holds."""

    files: list[str]


def read_npz(path: str | os.PathLike, *, what: str = "an .npz file", keys: Iterable[str] | None = None,
             error: type[MetricsError] = MetricsError) -> NpzContents:
    """The arrays of an ``.npz`` archive (all, or those of ``keys`` it has), read at once.

    Every way a file can fail to be one is a :class:`MetricsError` naming the file and the problem:
    missing, a directory, not a ZIP archive at all (a text file, an HTML page, ...: said what it is),
    a damaged archive, arrays of Python objects (never unpickled), or a damaged array; ``error`` is the
    class raised (a :class:`MetricsError`).
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a directory, not {what}")
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist (expected {what})")
    with open(path, "rb") as f:
        head = f.read(4)
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise error(f"{path} is not {what}: it is {describe_contents(path)}")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = data.files if keys is None else [k for k in keys if k in data.files]
            out = NpzContents((k, data[k]) for k in names)
            out.files = list(data.files)
    except ValueError as exc:
        if "pickle" in str(exc) or "allow_pickle" in str(exc):
            raise error(f"{path}: holds arrays of Python objects (pickled data), which skiptune never loads; "
                        "save plain numeric arrays (np.savez(path, name=array))") from None
        raise error(f"{path}: a damaged .npz archive (truncated or corrupt?): {exc}") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as exc:
        raise error(f"{path}: a damaged .npz archive (truncated or corrupt?): {type(exc).__name__}: {exc}") \
            from None
    return out


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write ``arrays`` plus a JSON ``meta`` string to an uncompressed ``.npz`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays, meta=np.asarray(json.dumps(dict(meta), sort_keys=True, default=str)))
    return path
