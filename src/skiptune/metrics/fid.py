"""Fréchet distance between Gaussians fitted to features (FID; Heusel et al. 2017, "GANs Trained by a
Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", eq. 6):

    FID = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^{1/2})

computed in float64. Two ways to get ``Tr (Sigma_1 Sigma_2)^{1/2}``:

- ``method='sqrtm'`` (the reference implementations: TTUR, pytorch-fid, clean-fid, EDM):
  ``scipy.linalg.sqrtm(Sigma_1 @ Sigma_2)``, real part. If the result is not finite (a singular
  product), ``eps * I`` is added to both covariances and the root is taken again.
- ``method='eigh'``: with ``A = Sigma_1^{1/2}`` (symmetric PSD root by eigendecomposition),
  ``Sigma_1 Sigma_2`` is similar to the PSD matrix ``A Sigma_2 A``, so the trace is
  ``sum_i sqrt(lambda_i(A Sigma_2 A))`` with eigenvalues clipped at 0. Real by construction and
  stable for singular covariances; it agrees with ``sqrtm`` when that converges.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

from skiptune.core.errors import InputError

from .errors import FeatureDimMismatchError, MetricsError
from .stats import FeatureStats

#: (sample counts, dimensions) already warned about in this process
_WARNED_FEW: set[tuple[tuple[int, ...], int]] = set()


def warn_few_samples(counts: dict[str, int], dim: int) -> None:
    """Warn (once per sample counts and ``dim`` in a process) that an FID whose sets (``{what: n}``) have no more
    samples than ``dim`` feature dimensions uses a singular covariance: it is biased upwards and comparable only
    with FIDs at the same counts."""
    few = {what: n for what, n in counts.items() if 2 <= n <= dim}
    key = (tuple(sorted(few.values())), dim)
    if not few or key in _WARNED_FEW:
        return
    _WARNED_FEW.add(key)
    sets = " and ".join(f"{n} samples of {what}" for what, n in few.items())
    warnings.warn(f"FID from {sets} in {dim} feature dimensions: with no more samples than dimensions the "
                  f"covariance is singular (rank < {dim}), so the FID is strongly biased upwards and comparable only "
                  f"with FIDs of as many samples; use more than {dim} samples per set (papers use 50,000)",
                  UserWarning, stacklevel=3)


def _check(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
           names: tuple[str, str] = ("the first set", "the second set")) -> None:
    if mu1.ndim != 1 or mu2.ndim != 1:
        raise MetricsError(f"means must be 1-D, got shapes {mu1.shape} and {mu2.shape}")
    if mu1.shape != mu2.shape:
        raise FeatureDimMismatchError(
            f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}; both sets must come from the same "
            "feature network and layer (e.g. Inception pool3, 2048-d)"
        )
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise FeatureDimMismatchError(
                f"{name} has shape {s.shape}, expected ({d}, {d}) to match the means"
            )
    for name, a, owner in (("mu1", mu1, names[0]), ("sigma1", sigma1, names[0]), ("mu2", mu2, names[1]),
                           ("sigma2", sigma2, names[1])):
        bad = int((~np.isfinite(a)).sum())
        if bad:
            part = "mean" if name.startswith("mu") else "covariance"
            raise MetricsError(f"the {part} ({name}) of {owner} has {bad} NaN/inf value(s) of {a.size}: those "
                               "statistics are broken; recompute them from finite features")


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(
    sigma1: np.ndarray, sigma2: np.ndarray, *, method: str = "sqrtm", eps: float = 1e-6
) -> float:
    """``Tr (Sigma_1 Sigma_2)^{1/2}`` by ``'sqrtm'`` (with the ``eps * I`` fallback) or ``'eigh'``."""
    if method == "eigh":
        a = _psd_sqrt(sigma1)
        m = a @ sigma2 @ a
        w = np.linalg.eigvalsh((m + m.T) / 2)
        return float(np.sqrt(np.clip(w, 0, None)).sum())
    if method != "sqrtm":
        raise InputError(f"method must be 'sqrtm' or 'eigh', not {method!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise MetricsError("sqrtm failed even with eps * I added; try method='eigh'")
    return float(np.trace(np.real(covmean)))


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    method: str = "sqrtm",
    eps: float = 1e-6,
    names: tuple[str, str] = ("the first set", "the second set"),
) -> float:
    """FID between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (see the module docstring); ``names`` say what the
    two are in error messages.

    Raises:
        FeatureDimMismatchError: the two sets have different dimensions.
        MetricsError: NaN/inf inputs.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    _check(mu1, sigma1, mu2, sigma2, names)
    diff = mu1 - mu2
    tr = trace_sqrt_product(sigma1, sigma2, method=method, eps=eps)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr)


def check_compatible(a: FeatureStats, b: FeatureStats) -> None:
    """Raise if two statistics come from different feature dimensions or (known) extractors/features."""
    if a.dim != b.dim:
        raise FeatureDimMismatchError(
            f"feature dimensions differ: {a.dim} ({a.meta.get('extractor', 'unknown extractor')}) vs "
            f"{b.dim} ({b.meta.get('extractor', 'unknown extractor')}); compute both with the same extractor"
        )
    for key in ("extractor", "feature"):
        x, y = a.meta.get(key), b.meta.get(key)
        if x and y and x != y:
            raise FeatureDimMismatchError(f"{key} differs: {x!r} vs {y!r}; compute both with the same one")


def _describe(st: FeatureStats, default: str) -> str:
    source = st.meta.get("source")
    return f"{default} ({source})" if source else default


def fid_from_stats(a: FeatureStats, b: FeatureStats, *, method: str = "sqrtm", eps: float = 1e-6) -> float:
    """FID between two :class:`FeatureStats` (checks that their dimensions and extractors agree).

    Warns (once per sample count and dimension) when either side has no more samples than feature
    dimensions: its covariance is then singular and the FID biased (see :func:`warn_few_samples`).
    """
    check_compatible(a, b)
    names = (_describe(a, "the first set"), _describe(b, "the second set"))
    warn_few_samples({name: st.n for st, name in ((a, names[0]), (b, names[1])) if st.has_counts}, a.dim)
    return frechet_distance(a.mean, a.cov, b.mean, b.cov, method=method, eps=eps, names=names)


def fid_from_features(x: np.ndarray, y: np.ndarray, *, method: str = "sqrtm", eps: float = 1e-6) -> float:
    """FID between two raw feature arrays ``[N, d]`` and ``[M, d]``."""
    return fid_from_stats(
        FeatureStats.from_features(x), FeatureStats.from_features(y), method=method, eps=eps
    )


def fid_floor(pool: np.ndarray, n: int, *, ref_n: int | None = None, draws: int = 20, seed: int = 0,
              method: str = "sqrtm") -> np.ndarray:
    """Real-vs-real FID at sample count ``n``: what a perfect sampler would score, ``draws`` times.

    Each draw splits a random permutation of the ``pool`` (real features ``[N, d]``) into ``n``
    features that stand in for the generated set and ``ref_n`` (default: all the others) for the
    reference, disjoint, and returns their FID. Sampling is uniform, not stratified: an
    unconditional sampler's class proportions fluctuate from set to set, and a class-balanced
    held-out set would hide that part of the FID's finite-sample bias and spread (for 300 of
    sklearn's digits in classifier features: 3.7 stratified vs 12.2 uniform). Compare a model's
    FID at ``n`` with this distribution (its mean, and its spread across draws).
    """
    a = np.asarray(pool, dtype=np.float64)
    if a.ndim != 2 or not np.isfinite(a).all():
        raise MetricsError(f"the pool must be a finite 2-D feature array [N, d], got shape {a.shape}")
    ref_n = len(a) - n if ref_n is None else ref_n
    if not 2 <= n or not 2 <= ref_n or n + ref_n > len(a):
        raise MetricsError(f"the floor needs n >= 2 and ref_n >= 2 disjoint features from the pool: n={n}, "
                           f"ref_n={ref_n}, pool {len(a)}; lower n or ref_n, or add real images")
    if draws < 1:
        raise MetricsError(f"draws must be >= 1, got {draws}")
    rng = np.random.default_rng([seed, n, ref_n])
    out = np.empty(draws)
    for i in range(draws):
        p = rng.permutation(len(a))
        x, y = FeatureStats.from_features(a[p[:n]]), FeatureStats.from_features(a[p[n:n + ref_n]])
        out[i] = frechet_distance(x.mean, x.cov, y.mean, y.cov, method=method)  # small n on purpose: no warning
    return out
