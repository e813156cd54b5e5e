"""The demo's protocol: full-set unbiased KID, the two feature spaces, Holm verdicts, the power calculation,
the table, and stored KID runs that a rerun reads back."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skiptune.core.stats import t_interval
from skiptune.demo import protocol as P


def _poly_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Independent reference: explicit double loops over (a.b/d + 1)^3, diagonals excluded within a set."""
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_kid_full_is_the_unbiased_polynomial_mmd2_of_whole_sets():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.3, 1.2, size=(11, 5))
    assert P.kid_full(x, y) == pytest.approx(1e3 * _poly_mmd2_unbiased(x, y), rel=1e-10)
    # unbiased: two samples of one distribution average to ~0 (a biased estimator stays clearly positive)
    vals = [P.kid_full(rng.normal(size=(20, 4)), rng.normal(size=(30, 4))) for _ in range(300)]
    assert abs(np.mean(vals)) < 3 * np.std(vals) / math.sqrt(len(vals))


def test_reference_scale_is_the_rms_and_scaling_divides():
    ref = np.array([[3.0, -4.0], [0.0, 0.0]])
    assert P.reference_scale(ref) == pytest.approx(math.sqrt(25 / 4))
    out = P.scaled({"a": ref}, {"a": 2.0})
    assert np.array_equal(out["a"], ref / 2)


def test_feature_spaces_are_deterministic_and_class_is_the_extractor_features():
    from skiptune.demo.assets import classifier_extractor, load_classifier
    from skiptune.metrics import extract_features

    clf = load_classifier()
    imgs = torch.randint(0, 256, (37, 1, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    a, b = P.classifier_spaces(clf, imgs), P.classifier_spaces(clf, imgs)
    assert a["class"].shape == (37, 64) and a["style"].shape == (37, 128)
    for s in P.SPACES:
        assert np.array_equal(a[s], b[s])  # no randomness
        np.testing.assert_allclose(P.classifier_spaces(clf, imgs, batch_size=5)[s], a[s], rtol=1e-5, atol=1e-6)
    ext = classifier_extractor()
    ref = extract_features(imgs, ext, features=["features"], keep=True).get("features").features
    np.testing.assert_allclose(a["class"], ref, rtol=1e-5, atol=1e-5)


def test_style_space_does_not_see_where_strokes_are():
    """Channel means and stds over positions: a stroke moved within the image's interior keeps its style
    features (to float precision) while its class features change."""
    from skiptune.demo.assets import load_classifier

    clf = load_classifier()
    img = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    img[0, 0, 5:10, 5:7] = 255
    a = P.classifier_spaces(clf, img)
    for shift in [(1, 0), (0, 1), (2, 2)]:
        b = P.classifier_spaces(clf, torch.roll(img, shifts=shift, dims=(2, 3)))
        np.testing.assert_allclose(a["style"], b["style"], atol=1e-5)
        assert np.abs(a["class"] - b["class"]).max() > 0.5


def _diff(values):
    return t_interval(values)


def test_holm_tests_adjust_over_the_family_and_give_verdicts():
    from scipy.stats import ttest_1samp

    diffs = {("heun", 9, "class"): _diff([-30, -20, -25, -28, -22]), ("heun", 9, "style"): _diff([5, 6, 5.5, 7, 6]),
             ("unipc", 9, "class"): _diff([3, -4, 6, -2, 1])}
    tests = P.holm_tests(diffs)
    raw = {k: float(ttest_1samp(v.values, 0).pvalue) for k, v in diffs.items()}
    for k in diffs:
        assert tests[k].p == pytest.approx(raw[k], rel=1e-9)
    order = sorted(raw, key=raw.get)
    expect, running = {}, 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * raw[k]))
        expect[k] = running
    for k in diffs:
        assert tests[k].p_holm == pytest.approx(expect[k], rel=1e-9)
    assert tests[("heun", 9, "class")].verdict() == "helps"
    assert tests[("heun", 9, "style")].verdict() == "hurts"
    assert tests[("unipc", 9, "class")].verdict() == "not significant"
    one = P.holm_tests({("x", 1, "class"): _diff([1.0])})
    assert one[("x", 1, "class")].verdict() == "n/a"


def test_power_matches_the_noncentral_t_and_the_textbook_sample_size():
    from scipy.stats import nct
    from scipy.stats import t as student_t

    for sets, effect, sd, alpha in [(6, 2.6, 1.0, 0.05 / 12), (10, 0.8, 1.0, 0.05), (34, 0.5, 1.0, 0.05)]:
        df, nc = sets - 1, effect / sd * math.sqrt(sets)
        crit = student_t.ppf(1 - alpha / 2, df)
        assert P.paired_power(effect, sd, sets, alpha) == pytest.approx(nct.sf(crit, df, nc) + nct.cdf(-crit, df, nc),
                                                                        abs=1e-3)
    # the standard paired-t sample size: d_z = 0.5, two-sided alpha 0.05, power 0.8 -> 34 pairs
    assert P.sets_needed(0.5, 1.0, alpha=0.05) == 34
    # closed form: the normal approximation ((z_{1-a/2} + z_{0.8}) sd / effect)^2 = (1.95996 + 0.84162)^2 / 0.25
    assert P.normal_sets(0.5, 1.0, alpha=0.05) == pytest.approx((1.959964 + 0.841621) ** 2 / 0.25, rel=1e-6)
    # the t test needs Guenther's (1981) correction z_{1-a/2}^2 / 2 more than the normal approximation
    from scipy.stats import norm

    for effect, alpha in [(0.3, 0.05), (1.0, 0.01), (2.6, 0.05 / 12)]:
        need = P.sets_needed(effect, 1.0, alpha=alpha)
        guenther = P.normal_sets(effect, 1.0, alpha=alpha) + norm.ppf(1 - alpha / 2) ** 2 / 2
        assert math.ceil(guenther) - 1 <= need <= math.ceil(guenther) + 1
        assert P.paired_power(effect, 1.0, need, alpha) >= 0.8 > P.paired_power(effect, 1.0, need - 1, alpha)
    e = P.detectable_effect(1.0, 8, alpha=0.05 / 12)
    assert P.paired_power(e, 1.0, 8, 0.05 / 12) == pytest.approx(0.8, abs=1e-6)


def test_the_demo_protocol_is_fixed_and_its_seeds_are_fresh():
    from skiptune.demo.run import CONFIRM, PILOT, PILOT_HEUN9, QUICK
    from skiptune.sampling import parse_seeds

    seeds = {name: {s for ss in p.seed_sets() for s in parse_seeds(ss)} for name, p in
             (("confirm", CONFIRM), ("pilot", PILOT), ("quick", QUICK))}
    exploration = set(range(300))
    assert not seeds["confirm"] & (exploration | seeds["pilot"] | seeds["quick"])
    assert not seeds["pilot"] & exploration
    assert min(seeds["confirm"]) == 10000 and CONFIRM.rule == "const:0.7"
    # the confirmation's size follows from the pilot: at Holm's strictest level over its 12 tests, power >= 0.8
    m = 2 * len(CONFIRM.cells)
    assert P.sets_needed(PILOT_HEUN9["effect"], PILOT_HEUN9["sd"], alpha=0.05 / m) <= CONFIRM.sets


def test_demo_table_states_holm():
    from skiptune.demo.protocol import Test
    from skiptune.demo.run import Cell, format_table

    cells = []
    diffs = {("heun", 9, s): _diff(v) for s, v in (("class", [-3, -2, -4]), ("style", [1, 2, 1.5]))}
    tests = P.holm_tests(diffs)
    for (s, n, sp), t in tests.items():
        assert isinstance(t, Test)
        cells.append(Cell(s, n, sp, _diff([10, 11, 12]), _diff([7, 9, 8]), t, _diff([60, 62, 61]),
                          _diff([55, 57, 56])))
    table = format_table(cells, "const:0.7")
    assert "Holm-corrected over all 2 tests" in table and "p, Holm" in table
    assert "| heun | 9 | class |" in table and "| heun | 9 | style |" in table


def test_demo_stores_kid_and_a_rerun_reads_it_back(tmp_path, monkeypatch):
    import skiptune.demo.run as R
    from skiptune.experiment import open_store

    first = R.run_demo(tmp_path / "d", quick=True, progress=False)
    with open_store(tmp_path / "d" / "results.sqlite") as store:
        runs = store.runs()
    assert len(runs) == 2 * R.QUICK.sets
    for r in runs:
        assert {"fid", "kid_class", "kid_style"} <= set(r.metrics)
        assert r.config["demo_metrics"] == R.DEMO_METRICS

    def fail(*a, **k):
        raise AssertionError("a rerun must read the stored runs")

    monkeypatch.setattr(R, "score_demo", fail)
    again = R.run_demo(tmp_path / "d", quick=True, progress=False)
    assert again.table == first.table
    assert "Holm" in (tmp_path / "d" / "report.md").read_text()

