"""Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs", Sec. 4):

    IS = exp( E_x KL(p(y|x) || p(y)) ),   p(y) = E_x p(y|x),

estimated on each of ``splits`` consecutive parts of the samples (part ``i`` holds samples
``[i N / splits, (i+1) N / splits)``), reporting the mean and the (population, ``ddof=0``) standard
deviation over parts, as the original code, torch-fidelity and StyleGAN3/EDM do. With the FID
Inception the class probabilities are ``softmax(logits_unbiased)`` (the fc bias left out, as in
the original TF code). Computed in float64; ``0 log 0 = 0``.

Bounds used by the tests: uniform predictions give exactly 1; one-hot predictions spread evenly
over ``K`` classes within every part give exactly ``K``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.special

from skiptune.core.errors import InputError

from .errors import MetricsError, TooFewSamplesError
from .stats import FeatureArray, as_feature_matrix


class MeanStd(NamedTuple):
    """A metric estimated over several subsets: mean and standard deviation."""

    mean: float
    std: float


def inception_score(
    logits: FeatureArray | None = None,
    *,
    probs: FeatureArray | None = None,
    splits: int = 10,
) -> MeanStd:
    """Inception Score from class ``logits`` (softmaxed) or class ``probs`` ``[N, K]``; exactly one.

    Raises:
        TooFewSamplesError: fewer samples than ``splits``.
        MetricsError: probabilities that are negative or do not sum to 1.
    """
    if (logits is None) == (probs is None):
        raise TypeError("pass exactly one of logits= or probs=")
    if logits is not None:
        p = scipy.special.softmax(as_feature_matrix(logits, "logits").astype(np.float64), axis=1)
    else:
        p = as_feature_matrix(probs, "probs").astype(np.float64)
        if (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-4):
            raise MetricsError(
                "probs must be non-negative and sum to 1 per row (pass logits= for raw scores)"
            )
    n = p.shape[0]
    if splits < 1:
        raise InputError(f"splits must be >= 1, got {splits}")
    if n < splits:
        raise TooFewSamplesError(
            f"the Inception Score with {splits} splits needs at least {splits} samples, got {n}"
        )
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        marginal = part.mean(axis=0, keepdims=True)
        kl = scipy.special.xlogy(part, part) - scipy.special.xlogy(part, marginal)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return MeanStd(float(np.mean(scores)), float(np.std(scores)))
