"""The leaf layer: statistics (Holm, paired t tests), the denoiser interface, number checks, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from skiptune.core.checks import finite, integer, positive
from skiptune.core.denoiser import DenoiserInfo
from skiptune.core.errors import InputError, SkiptuneError, UnknownNameError
from skiptune.core.stats import holm, paired_difference, significant, t_interval, t_test_p


def test_holm_step_down_by_hand():
    # sorted p: 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    out = holm([0.01, math.nan, 0.02])  # an impossible test does not count in m
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_holm_controls_the_family_wise_error_under_the_null():
    rng = np.random.default_rng(0)
    trials, m, alpha = 4000, 6, 0.05
    rejections = sum(any(p < alpha for p in holm(list(rng.uniform(size=m)))) for _ in range(trials))
    # P(any rejection) <= alpha under independent nulls; 4000 trials put the estimate within ~0.007 of its mean
    assert rejections / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_t_test_and_intervals_agree_with_scipy():
    a, b = [3.0, 4.5, 2.0, 5.0], [2.0, 4.0, 2.5, 3.5]
    d = paired_difference(t_interval(a), t_interval(b))
    ref = sps.ttest_rel(a, b)
    assert t_test_p(d) == pytest.approx(ref.pvalue, rel=1e-12)
    lo, hi = sps.t.interval(0.95, 3, loc=np.mean(np.subtract(a, b)), scale=sps.sem(np.subtract(a, b)))
    assert (d.ci_low, d.ci_high) == pytest.approx((lo, hi), rel=1e-12)
    assert significant(d) == ("n.s." if lo < 0 < hi else "lower" if hi < 0 else "higher")
    assert math.isnan(t_test_p(t_interval([1.0])))
    with pytest.raises(InputError, match="same seed sets"):
        paired_difference(t_interval([1.0, 2.0]), t_interval([1.0, 2.0, 3.0]))


def test_number_checks_name_the_setting():
    assert integer(3, minimum=1, what="batch") == 3 and integer(4.0, minimum=0, what="n") == 4
    assert finite(-2, what="x") == -2.0 and positive(0.5, what="lr") == 0.5
    for bad in (0, 2.5, True, "3", None):
        with pytest.raises(InputError, match=r"batch must be an integer >= 1 \(images per step\), got"):
            integer(bad, minimum=1, what="batch", meaning="images per step")
    with pytest.raises(InputError, match="lr must be a finite number > 0"):
        positive(math.inf, what="lr")
    with pytest.raises(InputError, match="x must be a finite number"):
        finite(math.nan, what="x")


def test_denoiser_info_defaults_and_refusal():
    class Bare:
        img_channels, img_resolution = 3, 8

    info = DenoiserInfo.of(Bare())
    assert (info.shape, info.label_dim, info.sigma_min, info.sigma_max, info.sigma_data) == ((3, 8, 8), 0, 0.0,
                                                                                           math.inf, 0.5)
    assert info.alphas_cumprod is None
    with pytest.raises(InputError, match="not a skiptune denoiser: it has no img_channels, img_resolution"):
        DenoiserInfo.of(object())


def test_errors_are_catchable_as_the_builtins_they_mean():
    assert issubclass(InputError, ValueError) and issubclass(InputError, SkiptuneError)
    err = UnknownNameError("unknown feature extractor 'x'; registered: [...]")
    assert isinstance(err, KeyError) and str(err) == "unknown feature extractor 'x'; registered: [...]"
