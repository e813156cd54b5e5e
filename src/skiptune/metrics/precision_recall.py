"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models", Sec. 2):

Each set's manifold is the union of balls ``B(phi, r_k(phi))`` around its features, ``r_k`` being
the distance to the ``k``-th nearest *other* feature of the same set (``k = 3``). Then

    precision = share of generated features inside some real ball   f(phi_g, Phi_r)
    recall    = share of real features inside some generated ball    f(phi_r, Phi_g)

with ``phi`` inside ``B(c, r)`` iff ``||phi - c|| <= r`` (boundary included, as in the reference code).
Distances are computed in float64 in row blocks of ``batch_size`` (memory ``O(batch_size * N)``),
comparing squared distances ``||a||^2 + ||b||^2 - 2 a.b`` clipped at 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from skiptune.core.errors import InputError

from .errors import FeatureDimMismatchError, TooFewSamplesError
from .stats import FeatureArray, as_feature_matrix


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def _sq_dist(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) + b_sq[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min_(0.0)


def kth_neighbour_radii_sq(x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Squared distance of every row of ``x`` to its ``k``-th nearest other row."""
    x_sq = (x * x).sum(1)
    out = []
    for i in range(0, x.shape[0], batch_size):
        d = _sq_dist(x[i : i + batch_size], x, x_sq)
        rows = torch.arange(d.shape[0])
        d[rows, rows + i] = 0.0  # the point itself, exactly
        out.append(d.kthvalue(k + 1, dim=1).values)  # k+1: the self-distance 0 is the 1st
    return torch.cat(out)


def coverage(probes: torch.Tensor, manifold: torch.Tensor, radii_sq: torch.Tensor, batch_size: int) -> float:
    """Share of ``probes`` within distance ``sqrt(radii_sq[j])`` of some ``manifold[j]``."""
    m_sq = (manifold * manifold).sum(1)
    inside = 0
    for i in range(0, probes.shape[0], batch_size):
        d = _sq_dist(probes[i : i + batch_size], manifold, m_sq)
        inside += int((d <= radii_sq[None, :]).any(dim=1).sum())
    return inside / probes.shape[0]


def precision_recall(
    real: FeatureArray, fake: FeatureArray, *, k: int = 3, batch_size: int = 1024
) -> PrecisionRecall:
    """Improved precision and recall of ``fake`` features against ``real`` features.

    Raises:
        TooFewSamplesError: a set has ``k`` or fewer samples (the ``k``-th neighbour needs ``k + 1``).
        FeatureDimMismatchError: different feature dimensions.
    """
    r = torch.from_numpy(np.ascontiguousarray(as_feature_matrix(real, "real features"), np.float64))
    f = torch.from_numpy(np.ascontiguousarray(as_feature_matrix(fake, "generated features"), np.float64))
    if r.shape[1] != f.shape[1]:
        raise FeatureDimMismatchError(f"real features are {r.shape[1]}-d, generated {f.shape[1]}-d")
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    for name, x in (("real", r), ("generated", f)):
        if x.shape[0] <= k:
            raise TooFewSamplesError(
                f"precision/recall with k={k} needs at least {k + 1} {name} samples, got {x.shape[0]}"
            )
    precision = coverage(f, r, kth_neighbour_radii_sq(r, k, batch_size), batch_size)
    recall = coverage(r, f, kth_neighbour_radii_sq(f, k, batch_size), batch_size)
    return PrecisionRecall(precision, recall)
