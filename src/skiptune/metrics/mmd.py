"""Maximum mean discrepancy with several kernels, KID and CMMD.

MMD (Gretton et al. 2012, "A Kernel Two-Sample Test"; seed 003 App. B):
``MMD^2(P, Q) = E k(X, X') - 2 E k(X, Y) + E k(Y, Y')``. For samples ``x_1..x_m``, ``y_1..y_n``:

- unbiased (seed 003 eq. 6, a U-statistic)::

      sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
        - 2 sum_{i,j} k(x_i, y_j) / (m n)

- biased (a V-statistic, diagonals included)::

      sum_{i,j} k(x_i, x_j) / m^2 + sum_{i,j} k(y_i, y_j) / n^2 - 2 sum_{i,j} k(x_i, y_j) / (m n)

Kernels (:class:`Kernel`): Gaussian RBF ``exp(-||a-b||^2 / (2 sigma^2))``; Laplacian
``exp(-||a-b||_1 / sigma)``; polynomial ``(gamma a.b + coef0)^degree`` (``gamma = 1/d`` by default);
linear ``a.b`` (for which the biased MMD^2 is exactly ``||mean x - mean y||^2``). ``sigma='median'``
picks the median pairwise distance of the pooled samples (the median heuristic).

KID (Binkowski et al. 2018, "Demystifying MMD GANs", Sec. 4): unbiased MMD^2 with the cubic
polynomial kernel ``(a.b/d + 1)^3`` averaged over ``subsets`` random subsets of ``subset_size``
samples drawn without replacement from each set; mean and (``ddof=0``) std over subsets, as
torch-fidelity reports them.

CMMD (Jayasumana et al. 2024, "Rethinking FID: Towards a Better Evaluation Metric for Image
Generation"): ``1000 x`` biased MMD^2 with the RBF kernel, ``sigma = 10``, on CLIP embeddings; seed
003's IMMD is the same on Inception features. All sums are float64, computed in row blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from skiptune.core.errors import InputError

from .errors import FeatureDimMismatchError, TooFewSamplesError
from .inception_score import MeanStd
from .stats import FeatureArray, as_feature_matrix

KERNELS = ("rbf", "laplacian", "polynomial", "linear")


@dataclass(frozen=True)
class Kernel:
    """A positive-definite kernel; ``sigma`` may be a number or ``'median'`` (resolved per data)."""

    name: str
    sigma: float | str | None = None
    degree: int = 3
    gamma: float | None = None
    coef0: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in KERNELS:
            raise InputError(f"unknown kernel {self.name!r}; choose from {KERNELS}")
        if self.name in ("rbf", "laplacian"):
            if self.sigma is None:
                raise InputError(f"the {self.name} kernel needs sigma (a positive number or 'median')")
            if self.sigma != "median" and not (isinstance(self.sigma, (int, float)) and self.sigma > 0):
                raise InputError(f"sigma must be > 0 or 'median', got {self.sigma!r}")

    def describe(self) -> str:
        if self.name in ("rbf", "laplacian"):
            return (
                f"{self.name}(sigma={self.sigma:.6g})"
                if not isinstance(self.sigma, str)
                else f"{self.name}(median)"
            )
        if self.name == "polynomial":
            g = "1/d" if self.gamma is None else f"{self.gamma:g}"
            return f"polynomial(degree={self.degree}, gamma={g}, coef0={self.coef0:g})"
        return "linear"

    def resolve(self, x: torch.Tensor, y: torch.Tensor, *, max_points: int = 1000, seed: int = 0) -> Kernel:
        """Replace ``sigma='median'`` by the median pairwise distance (L2 for RBF, L1 for Laplacian;
        the lower middle value for an even number of pairs)
        of up to ``max_points`` pooled samples (a seeded subsample)."""
        if self.sigma != "median":
            return self
        z = torch.cat([x, y])
        if z.shape[0] > max_points:
            idx = np.random.default_rng(seed).choice(z.shape[0], max_points, replace=False)
            z = z[torch.from_numpy(np.sort(idx))]
        d = torch.cdist(z, z, p=2.0 if self.name == "rbf" else 1.0)
        iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1)
        med = float(d[iu[0], iu[1]].median())
        if not med > 0:
            raise InputError("median pairwise distance is 0 (all samples identical); give sigma explicitly")
        return replace(self, sigma=med)

    def matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Kernel matrix ``[len(a), len(b)]``."""
        if self.name == "rbf":
            d2 = ((a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)
            return torch.exp(-d2 / (2.0 * float(self.sigma) ** 2))
        if self.name == "laplacian":
            return torch.exp(-torch.cdist(a, b, p=1.0) / float(self.sigma))
        if self.name == "polynomial":
            gamma = 1.0 / a.shape[1] if self.gamma is None else self.gamma
            return (gamma * (a @ b.T) + self.coef0) ** self.degree
        return a @ b.T

    def diag(self, a: torch.Tensor) -> torch.Tensor:
        """``k(a_i, a_i)`` for every row."""
        if self.name in ("rbf", "laplacian"):
            return torch.ones(a.shape[0], dtype=a.dtype)
        sq = (a * a).sum(1)
        if self.name == "polynomial":
            gamma = 1.0 / a.shape[1] if self.gamma is None else self.gamma
            return (gamma * sq + self.coef0) ** self.degree
        return sq


def make_kernel(kernel: str | Kernel, **kwargs: object) -> Kernel:
    """A :class:`Kernel` from a name and options (or a kernel returned as is)."""
    return kernel if isinstance(kernel, Kernel) else Kernel(kernel, **kwargs)


def _as_tensor(x: FeatureArray, name: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(as_feature_matrix(x, name), np.float64))


def _block_sum(kernel: Kernel, a: torch.Tensor, b: torch.Tensor, batch_size: int) -> float:
    return float(sum(kernel.matrix(a[i : i + batch_size], b).sum() for i in range(0, a.shape[0], batch_size)))


def _mmd2_tensors(kernel: Kernel, x: torch.Tensor, y: torch.Tensor, unbiased: bool, batch_size: int) -> float:
    m, n = x.shape[0], y.shape[0]
    sxx, syy = _block_sum(kernel, x, x, batch_size), _block_sum(kernel, y, y, batch_size)
    sxy = _block_sum(kernel, x, y, batch_size)
    if not unbiased:
        return sxx / m**2 + syy / n**2 - 2.0 * sxy / (m * n)
    dxx, dyy = float(kernel.diag(x).sum()), float(kernel.diag(y).sum())
    return (sxx - dxx) / (m * (m - 1)) + (syy - dyy) / (n * (n - 1)) - 2.0 * sxy / (m * n)


def _pair(x: FeatureArray, y: FeatureArray, need: int) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_tensor(x, "first features"), _as_tensor(y, "second features")
    if a.shape[1] != b.shape[1]:
        raise FeatureDimMismatchError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    for name, t in (("first", a), ("second", b)):
        if t.shape[0] < need:
            raise TooFewSamplesError(
                f"this MMD estimate needs at least {need} samples per set; the {name} has {t.shape[0]}"
            )
    return a, b


def mmd2(
    x: FeatureArray,
    y: FeatureArray,
    kernel: str | Kernel = "rbf",
    *,
    unbiased: bool = True,
    batch_size: int = 1024,
    **kernel_kwargs: object,
) -> float:
    """MMD^2 between feature sets ``x`` [m, d] and ``y`` [n, d] (unbiased eq. 6, or biased).

    ``kernel`` is a :class:`Kernel` or a name with options, e.g. ``mmd2(x, y, 'rbf', sigma=1.0)``.
    """
    a, b = _pair(x, y, 2 if unbiased else 1)
    k = make_kernel(kernel, **kernel_kwargs).resolve(a, b)
    return _mmd2_tensors(k, a, b, unbiased, batch_size)


DEFAULT_MMD_KERNELS: tuple[Kernel, ...] = (
    Kernel("rbf", sigma="median"),
    Kernel("laplacian", sigma="median"),
    Kernel("polynomial"),
    Kernel("linear"),
)


def mmd_suite(
    x: FeatureArray,
    y: FeatureArray,
    kernels: Sequence[Kernel] = DEFAULT_MMD_KERNELS,
    *,
    rbf_sigmas: Sequence[float] = (),
    unbiased: bool = True,
    batch_size: int = 1024,
) -> dict[str, float]:
    """MMD^2 under several kernels (seed 003 Table 13): ``{kernel description: value}``.

    ``rbf_sigmas`` adds one Gaussian RBF kernel per bandwidth. Median bandwidths are resolved on the
    pooled data and the resolved value appears in the key.
    """
    a, b = _pair(x, y, 2 if unbiased else 1)
    out: dict[str, float] = {}
    for k in (*kernels, *(Kernel("rbf", sigma=float(s)) for s in rbf_sigmas)):
        k = k.resolve(a, b)
        out[k.describe()] = _mmd2_tensors(k, a, b, unbiased, batch_size)
    return out


def kid(
    x: FeatureArray,
    y: FeatureArray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> MeanStd:
    """Kernel Inception Distance: unbiased MMD^2, kernel ``(gamma a.b + coef0)^degree`` (``gamma = 1/d``),
    over ``subsets`` subsets of ``subset_size`` samples of each set (drawn with ``numpy``'s
    ``default_rng(seed)``, without replacement).

    Raises:
        TooFewSamplesError: a set has fewer than ``subset_size`` samples (the message says how many
            more are needed, or which ``subset_size`` would fit).
    """
    a, b = _as_tensor(x, "first features"), _as_tensor(y, "second features")
    if a.shape[1] != b.shape[1]:
        raise FeatureDimMismatchError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if subset_size < 2 or subsets < 1:
        raise InputError(f"need subset_size >= 2 and subsets >= 1, got {subset_size} and {subsets}")
    short = [(name, t.shape[0]) for name, t in (("first", a), ("second", b)) if t.shape[0] < subset_size]
    if short:
        have = ", ".join(f"the {name} set has {n} ({subset_size - n} short)" for name, n in short)
        raise TooFewSamplesError(
            f"KID with subset_size={subset_size} needs at least {subset_size} samples in each set; {have}. "
            f"Add samples or pass subset_size<={min(a.shape[0], b.shape[0])}"
        )
    kernel = Kernel("polynomial", degree=degree, gamma=gamma, coef0=coef0)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        xs = a[torch.from_numpy(rng.choice(a.shape[0], subset_size, replace=False))]
        ys = b[torch.from_numpy(rng.choice(b.shape[0], subset_size, replace=False))]
        values.append(_mmd2_tensors(kernel, xs, ys, True, subset_size))
    return MeanStd(float(np.mean(values)), float(np.std(values)))


def cmmd(
    x: FeatureArray, y: FeatureArray, *, sigma: float = 10.0, scale: float = 1000.0, batch_size: int = 1024
) -> float:
    """CMMD-style distance: ``scale x`` biased MMD^2 with the RBF kernel of bandwidth ``sigma``.

    On CLIP embeddings this is CMMD; on Inception pool features it is seed 003's IMMD.
    """
    return scale * mmd2(x, y, Kernel("rbf", sigma=sigma), unbiased=False, batch_size=batch_size)
