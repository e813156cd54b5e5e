"""The demo's measurement protocol: two feature spaces, unbiased KID, Holm-corrected paired tests, power.

Feature spaces (both from the shipped digits classifier, computed here from its modules):

- ``class``: the 64-d penultimate features (what the demo's FID uses). Trained to separate the ten
  digits, they mostly see which digit a sample is, i.e. a set's class proportions.
- ``style``: per-channel mean and standard deviation over the image of the first two conv layers'
  activations (32 + 32 channels, 128-d). Channel means and standard deviations of early conv
  activations are the "style" statistics of style transfer (Huang & Belongie 2017, AdaIN); averaging
  over positions discards where strokes are, so they respond to stroke width, contrast, blur and
  noise rather than to which digit is drawn. No randomness is involved (a fixed network in eval mode).

Each space is divided by one number, the RMS of its reference features (:func:`reference_scale`).
KID is the unbiased MMD^2 (a U-statistic) with the cubic polynomial kernel ``(a.b/d + 1)^3`` of the
whole generated set against the whole reference (no subsets: with 100-300 samples per set the full-set
estimator is the one with the smallest variance); its expectation is 0 for a perfect sampler at every
sample count, unlike FID's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from skiptune.core.stats import Estimate, holm, paired_difference, t_test_p
from skiptune.metrics.mmd import Kernel, mmd2

#: feature spaces of the demo, in report order
SPACES = ("class", "style")
#: KID is reported in units of 1e-3 (the common convention for KID)
KID_SCALE = 1e3
KID_KERNEL = Kernel("polynomial", degree=3, gamma=None, coef0=1.0)


def classifier_spaces(model, images_uint8: torch.Tensor, *, batch_size: int = 500) -> dict[str, np.ndarray]:
    """``{"class": [n, 64], "style": [n, 128]}`` float64 features of uint8 images ``[n, C, 16, 16]``.

    The preprocessing is that of :func:`skiptune.demo.assets.classifier_extractor` (gray mean, [-1, 1]),
    so ``class`` equals that extractor's ``features``.
    """
    import torch.nn.functional as F

    if images_uint8.shape[-1] != model.resolution:
        raise ValueError(f"the demo's feature spaces take {model.resolution}x{model.resolution} images")
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPACES}
    with torch.no_grad():
        for i in range(0, images_uint8.shape[0], batch_size):
            y = images_uint8[i:i + batch_size].to(torch.float32)
            y = y.mean(dim=1, keepdim=True) if model.in_channels == 1 else y
            y = y / 127.5 - 1
            h0 = F.silu(model.norms[0](model.conv0(y)))
            h1 = F.silu(model.norms[1](model.conv1(h0)))
            style = [h.mean(dim=(2, 3)) for h in (h0, h1)] + [h.std(dim=(2, 3)) for h in (h0, h1)]
            out["style"].append(torch.cat(style, 1).double().numpy())
            out["class"].append(model.features(y)["features"].double().numpy())
    return {s: np.concatenate(v) for s, v in out.items()}


def kid_full(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with ``(a.b/d + 1)^3`` of all of ``x`` vs all of ``y``, in units of 1e-3."""
    return KID_SCALE * mmd2(x, y, KID_KERNEL, unbiased=True)


def reference_scale(ref: np.ndarray) -> float:
    """The root mean square of the reference's feature entries: the one number each space is divided by.

    The kernel's ``gamma = 1/d`` presumes features of order 1 (as Inception's pool features are); the
    classifier's penultimate features have an RMS of about 5 and the style statistics about 0.4, so
    without it the cubic term would dominate one space and the linear term the other. A fixed
    function of the reference, applied to generated and real features alike."""
    return float(np.sqrt(np.mean(np.square(np.asarray(ref, np.float64)))))


def scaled(spaces: dict[str, np.ndarray], scales: dict[str, float]) -> dict[str, np.ndarray]:
    return {s: spaces[s] / scales[s] for s in spaces}


# ---------------------------------------------------------------- tests and power


@dataclass(frozen=True)
class Test:
    """A paired comparison of one table cell: rule minus baseline over the same seed sets."""

    key: tuple
    diff: Estimate
    p: float
    p_holm: float = math.nan

    def verdict(self, alpha: float = 0.05) -> str:
        if math.isnan(self.p_holm):
            return "n/a"
        if self.p_holm >= alpha:
            return "not significant"
        return "helps" if self.diff.mean < 0 else "hurts"


def holm_tests(diffs: dict[tuple, Estimate]) -> dict[tuple, Test]:
    """Two-sided one-sample t tests of each paired difference, Holm-adjusted over all of them (one family)."""
    keys = list(diffs)
    ps = [t_test_p(diffs[k]) for k in keys]
    adj = holm(ps)
    return {k: Test(k, diffs[k], p, a) for k, p, a in zip(keys, ps, adj, strict=True)}


def paired_power(effect: float, sd: float, sets: int, alpha: float) -> float:
    """Power of the two-sided paired t test at level ``alpha`` with ``sets`` pairs, when the mean paired
    difference is ``effect`` and its set-to-set standard deviation ``sd``.

    The noncentral t probability ``P(|T| > t_crit)``, T ~ t'(df = sets - 1, nc = |effect| sqrt(sets) / sd),
    computed as ``E_V[Phi(nc - t_crit sqrt(V/df)) + Phi(-nc - t_crit sqrt(V/df))]`` over V ~ chi2(df)
    (one-dimensional quadrature; scipy's ``nct`` returns NaN far in its tails)."""
    from scipy.integrate import quad
    from scipy.stats import chi2, norm
    from scipy.stats import t as student_t

    if sets < 2:
        return 0.0
    df, nc = sets - 1, abs(effect) / sd * math.sqrt(sets)
    crit = float(student_t.ppf(1 - alpha / 2, df))

    def integrand(v: float) -> float:
        c = crit * math.sqrt(v / df)
        return (norm.cdf(nc - c) + norm.cdf(-nc - c)) * chi2.pdf(v, df)

    lo, hi = chi2.ppf(1e-12, df), chi2.ppf(1 - 1e-12, df)
    return float(min(1.0, quad(integrand, lo, hi, limit=200, points=[df])[0]))


def sets_needed(effect: float, sd: float, *, alpha: float, power: float = 0.8, max_sets: int = 10_000) -> int:
    """The smallest number of seed sets for which :func:`paired_power` reaches ``power``."""
    if sd <= 0:
        return 2
    s = 2
    while paired_power(effect, sd, s, alpha) < power:
        s += 1
        if s > max_sets:
            raise ValueError(f"more than {max_sets} seed sets needed for effect {effect} with sd {sd}")
    return s


def normal_sets(effect: float, sd: float, *, alpha: float, power: float = 0.8) -> float:
    """The closed-form (normal) approximation ``((z_{1-alpha/2} + z_power) sd / effect)^2``."""
    from scipy.stats import norm

    return ((float(norm.ppf(1 - alpha / 2)) + float(norm.ppf(power))) * sd / abs(effect)) ** 2


def pilot_sd(values_rule: Sequence[float], values_base: Sequence[float]) -> Estimate:
    """The paired difference (with its set-to-set standard deviation ``.std``) of a pilot."""
    from skiptune.core.stats import t_interval

    return paired_difference(t_interval(values_rule), t_interval(values_base))


def detectable_effect(sd: float, sets: int, *, alpha: float, power: float = 0.8) -> float:
    """The smallest |mean paired difference| that ``sets`` seed sets detect with ``power`` (bisection)."""
    lo, hi = 0.0, sd
    while paired_power(hi, sd, sets, alpha) < power:
        hi *= 2
        if hi > 1e6 * sd:
            return math.inf
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if paired_power(mid, sd, sets, alpha) < power else (lo, mid)
    return hi
