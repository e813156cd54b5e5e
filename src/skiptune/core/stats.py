"""Statistics of repeated measurements: Student-t intervals, paired differences, Holm's correction.

A quantity measured on S disjoint seed sets (e.g. FID of one rule) is summarised by its mean and the
interval ``mean +- t_{(1+c)/2, S-1} s / sqrt(S)`` (s the standard deviation over the sets, ddof 1).
Two rules measured on the same seed sets are compared by the *paired* differences d_k = a_k - b_k,
which cancel the seed-set noise both share (common random numbers); the difference gets its own t
interval. Standard library and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from skiptune.core.errors import InputError


@dataclass(frozen=True)
class Estimate:
    """Mean of ``values`` with a Student-t confidence interval (``ci_low``/``ci_high`` are NaN for one value)."""

    mean: float
    ci_low: float
    ci_high: float
    std: float
    values: tuple[float, ...]
    confidence: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2

    def __str__(self) -> str:
        if len(self.values) < 2:
            return f"{self.mean:.4g} (1 seed set, no interval)"
        return f"{self.mean:.4g} +- {self.half_width:.2g} ({self.confidence:.0%} CI, {len(self.values)} seed sets)"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """``mean +- t_{(1+confidence)/2, S-1} * s / sqrt(S)`` with s the sample std (ddof 1) of S values."""
    from scipy.stats import t as student_t

    vals = tuple(float(v) for v in values)
    if not vals:
        raise InputError("t_interval needs at least one value")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie in (0, 1), got {confidence}")
    s = len(vals)
    mean = math.fsum(vals) / s
    if s == 1:
        return Estimate(mean, math.nan, math.nan, math.nan, vals, confidence)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (s - 1))
    half = float(student_t.ppf((1 + confidence) / 2, s - 1)) * std / math.sqrt(s)
    return Estimate(mean, mean - half, mean + half, std, vals, confidence)


def paired_difference(a: Estimate, b: Estimate) -> Estimate:
    """t interval of the per-seed-set differences a_k - b_k (same seed sets, same order)."""
    if len(a.values) != len(b.values):
        raise InputError(f"a paired difference needs the same seed sets: {len(a.values)} vs {len(b.values)} values")
    return t_interval([x - y for x, y in zip(a.values, b.values, strict=True)], a.confidence)


def significant(diff: Estimate) -> str:
    """``lower`` / ``higher`` when the interval excludes 0, ``n.s.`` when it contains 0, ``n/a`` without one."""
    if math.isnan(diff.ci_low):
        return "n/a"
    if diff.ci_high < 0:
        return "lower"
    if diff.ci_low > 0:
        return "higher"
    return "n.s."


def t_test_p(diff: Estimate) -> float:
    """Two-sided p-value of the one-sample t test of mean 0 on the values behind ``diff`` (NaN for < 2 values)."""
    from scipy.stats import t as student_t

    n = len(diff.values)
    if n < 2:
        return math.nan
    if diff.std == 0:
        return 1.0 if diff.mean == 0 else 0.0
    t = diff.mean / (diff.std / math.sqrt(n))
    return float(2 * student_t.sf(abs(t), n - 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over m comparisons).

    Sort p ascending; adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)); returned in input
    order. NaN p-values (no test possible) stay NaN and do not count in m.
    """
    idx = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out
