"""Inception Score, precision/recall, KID, MMD and CMMD against derived values."""

from __future__ import annotations

import numpy as np
import pytest

from skiptune.metrics import (
    FeatureDimMismatchError,
    Kernel,
    MetricsError,
    TooFewSamplesError,
    cmmd,
    inception_score,
    kid,
    mmd2,
    mmd_suite,
    precision_recall,
)

# -- Inception Score ---------------------------------------------------------------------------


def test_is_of_uniform_predictions_is_one() -> None:
    # p(y|x) = p(y) for every x, so every KL term is 0 and IS = exp(0) = 1.
    r = inception_score(probs=np.full((50, 7), 1 / 7))
    assert r.mean == pytest.approx(1.0, abs=1e-12) and r.std == pytest.approx(0.0, abs=1e-12)
    assert inception_score(np.zeros((50, 7))).mean == pytest.approx(1.0, abs=1e-12)  # equal logits


def test_is_of_evenly_spread_one_hot_predictions_is_the_class_count() -> None:
    # Each split holds every class equally often: p(y) uniform, KL(onehot || uniform) = log K, IS = K.
    k, splits = 5, 10
    labels = np.tile(np.arange(k), 2 * splits)  # split i = samples [10 i, 10 i + 10) = two cycles
    probs = np.eye(k)[labels]
    r = inception_score(probs=probs, splits=splits)
    assert r.mean == pytest.approx(k, rel=1e-12) and r.std == pytest.approx(0.0, abs=1e-12)


def test_is_errors() -> None:
    with pytest.raises(TooFewSamplesError, match="at least 10 samples, got 9"):
        inception_score(np.zeros((9, 3)))
    with pytest.raises(MetricsError, match="sum to 1"):
        inception_score(probs=np.full((20, 3), 0.5))
    with pytest.raises(TypeError):
        inception_score()


# -- precision / recall ------------------------------------------------------------------------


def test_pr_identical_sets() -> None:
    x = np.random.default_rng(0).standard_normal((60, 8))
    assert tuple(precision_recall(x, x)) == (1.0, 1.0)


def test_pr_hand_derived_one_dimensional_case() -> None:
    # Real {0,1,2,3,4}, k = 3: radii 3, 2, 2, 2, 3 (3rd nearest other point).
    # Fake {-3, 6.5, 7, 100}: -3 is on the ball of 0 (distance 3 <= 3), 6.5 and 7 in the ball of 4,
    # 100 nowhere -> precision 3/4. The fake radius of -3 is 103 (its 3rd neighbour is 100), which
    # covers every real point -> recall 1.
    real = np.arange(5.0)[:, None]
    fake = np.array([-3.0, 6.5, 7.0, 100.0])[:, None]
    p, r = precision_recall(real, fake, k=3, batch_size=2)
    assert p == 0.75 and r == 1.0


def test_pr_disjoint_sets() -> None:
    rng = np.random.default_rng(1)
    real, fake = rng.standard_normal((30, 4)), rng.standard_normal((30, 4)) + 100.0
    assert tuple(precision_recall(real, fake)) == (0.0, 0.0)


def test_pr_batch_size_does_not_matter() -> None:
    rng = np.random.default_rng(2)
    real, fake = rng.standard_normal((70, 6)), rng.standard_normal((50, 6)) * 1.5
    assert precision_recall(real, fake, batch_size=3) == precision_recall(real, fake, batch_size=1000)


def test_pr_errors() -> None:
    with pytest.raises(TooFewSamplesError, match="at least 4 generated samples, got 3"):
        precision_recall(np.zeros((10, 2)), np.zeros((3, 2)))
    with pytest.raises(FeatureDimMismatchError):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))


# -- MMD ---------------------------------------------------------------------------------------


def _eq6(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = len(kxx), len(kyy)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


@pytest.mark.parametrize(
    "kernel",
    [Kernel("rbf", sigma=1.5), Kernel("laplacian", sigma=2.0), Kernel("polynomial"), Kernel("linear")],
)
def test_mmd_of_a_set_with_itself(kernel: Kernel) -> None:
    x = np.random.default_rng(0).standard_normal((40, 5))
    assert mmd2(x, x, kernel, unbiased=False) == pytest.approx(0.0, abs=1e-12)
    # Unbiased, y = x: with S = sum K and D = trace K, eq. 6 gives 2 (S/m - D) / (m (m-1)).
    m = len(x)
    k = _kernel_np(kernel, x, x)
    expected = 2 * (k.sum() / m - np.trace(k)) / (m * (m - 1))
    assert mmd2(x, x, kernel) == pytest.approx(expected, rel=1e-10, abs=1e-14)
    if kernel.name == "rbf":  # 0 < k <= 1 and D = m, so the value lies in [-2/m, 0]
        assert -2 / m <= mmd2(x, x, kernel) <= 0


def _kernel_np(kernel: Kernel, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = a[:, None, :] - b[None, :, :]
    if kernel.name == "rbf":
        return np.exp(-(diff**2).sum(-1) / (2 * kernel.sigma**2))
    if kernel.name == "laplacian":
        return np.exp(-np.abs(diff).sum(-1) / kernel.sigma)
    if kernel.name == "polynomial":
        return (a @ b.T / a.shape[1] + 1.0) ** 3
    return a @ b.T


@pytest.mark.parametrize(
    "kernel",
    [Kernel("rbf", sigma=0.7), Kernel("laplacian", sigma=3.0), Kernel("polynomial"), Kernel("linear")],
)
def test_mmd_matches_direct_formulas(kernel: Kernel) -> None:
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((45, 4)) + 0.3
    kxx, kyy, kxy = _kernel_np(kernel, x, x), _kernel_np(kernel, y, y), _kernel_np(kernel, x, y)
    assert mmd2(x, y, kernel, batch_size=7) == pytest.approx(_eq6(kxx, kyy, kxy), rel=1e-10)
    biased = kxx.mean() + kyy.mean() - 2 * kxy.mean()
    assert mmd2(x, y, kernel, unbiased=False, batch_size=7) == pytest.approx(biased, rel=1e-10)


def test_linear_kernel_closed_forms() -> None:
    # Biased: mean k(x,x') - 2 mean k(x,y) + mean k(y,y') = ||xbar - ybar||^2 exactly.
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((25, 6)), rng.standard_normal((35, 6)) * 2 + 1
    d = x.mean(0) - y.mean(0)
    assert mmd2(x, y, "linear", unbiased=False) == pytest.approx(float(d @ d), rel=1e-12)
    # Unbiased: sum_{i != j} x_i.x_j = m^2 |xbar|^2 - sum |x_i|^2.
    m, n = len(x), len(y)
    xx = (m**2 * x.mean(0) @ x.mean(0) - (x**2).sum()) / (m * (m - 1))
    yy = (n**2 * y.mean(0) @ y.mean(0) - (y**2).sum()) / (n * (n - 1))
    assert mmd2(x, y, "linear") == pytest.approx(float(xx + yy - 2 * x.mean(0) @ y.mean(0)), rel=1e-10)


def test_unbiased_mmd_averages_to_zero_for_equal_distributions() -> None:
    # E[unbiased MMD^2] = 0 when P = Q; the biased estimate is positive on average
    # (its expectation is (E k(x,x) - E k(x,x')) (1/m + 1/n) > 0).
    rng = np.random.default_rng(6)
    vals, biased = [], []
    for _ in range(60):
        x, y = rng.standard_normal((30, 3)), rng.standard_normal((30, 3))
        vals.append(mmd2(x, y, "rbf", sigma=1.0))
        biased.append(mmd2(x, y, "rbf", sigma=1.0, unbiased=False))
    vals = np.array(vals)
    assert abs(vals.mean()) < 4 * vals.std() / np.sqrt(len(vals))
    assert np.mean(biased) > 4 * np.std(biased) / np.sqrt(len(biased))


def test_mmd_suite_and_median_bandwidth() -> None:
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((20, 3))
    out = mmd_suite(x, y, rbf_sigmas=(1.0,))
    z = np.concatenate([x, y])
    dist = np.sort(np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))[np.triu_indices(40, 1)])
    lower_median = float(dist[(len(dist) - 1) // 2])  # 780 pairs: the lower of the two middle values
    assert f"rbf(sigma={lower_median:.6g})" in out
    assert out["rbf(sigma=1)"] == pytest.approx(mmd2(x, y, "rbf", sigma=1.0), rel=1e-12)
    assert set(out) >= {"linear", "polynomial(degree=3, gamma=1/d, coef0=1)"}


def test_cmmd_is_scaled_biased_rbf_sigma_10() -> None:
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((20, 16)), rng.standard_normal((25, 16)) + 0.5
    k = Kernel("rbf", sigma=10.0)
    expected = 1000 * (
        _kernel_np(k, x, x).mean() + _kernel_np(k, y, y).mean() - 2 * _kernel_np(k, x, y).mean()
    )
    assert cmmd(x, y) == pytest.approx(expected, rel=1e-10)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9)


def test_kernel_validation() -> None:
    with pytest.raises(ValueError, match="needs sigma"):
        Kernel("rbf")
    with pytest.raises(ValueError, match="unknown kernel"):
        Kernel("cosine")


# -- KID ---------------------------------------------------------------------------------------


def test_kid_with_one_full_subset_is_eq6_with_the_cubic_kernel() -> None:
    # subset_size = set size: every subset is a permutation of the whole set, and eq. 6 is
    # permutation invariant, so KID equals the unbiased MMD^2 with (x.y/d + 1)^3 and std = 0.
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((40, 10)), rng.standard_normal((40, 10)) * 0.8
    poly = Kernel("polynomial")
    expected = _eq6(_kernel_np(poly, x, x), _kernel_np(poly, y, y), _kernel_np(poly, x, y))
    r = kid(x, y, subsets=3, subset_size=40)
    assert r.mean == pytest.approx(expected, rel=1e-10) and r.std == pytest.approx(0.0, abs=1e-12)


def test_kid_subsets_are_seeded() -> None:
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((60, 5)), rng.standard_normal((50, 5))
    assert kid(x, y, subsets=5, subset_size=20, seed=1) == kid(x, y, subsets=5, subset_size=20, seed=1)


def test_kid_too_few_samples_says_how_many() -> None:
    x, y = np.zeros((500, 4)), np.zeros((2000, 4))
    with pytest.raises(
        TooFewSamplesError,
        match=r"at least 1000 samples in each set; the first set has 500 "
        r"\(500 short\)\. Add samples or pass subset_size<=500",
    ):
        kid(x, y)
