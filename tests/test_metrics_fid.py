"""FID against closed forms and an independent scipy.linalg.sqrtm reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from skiptune.metrics import (
    FeatureDimMismatchError,
    FeatureStats,
    MetricsError,
    fid_from_features,
    fid_from_stats,
    frechet_distance,
)


def _random_spd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or 2 * d))
    return a @ a.T / a.shape[1]


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_shifted_identity_gaussians(method: str) -> None:
    # N(0, I) vs N(m, I): the trace term is Tr(I + I - 2 I) = 0, so FID = ||m||^2.
    d = 16
    m = np.arange(d, dtype=np.float64) / 7.0
    fid = frechet_distance(np.zeros(d), np.eye(d), m, np.eye(d), method=method)
    assert fid == pytest.approx(float(m @ m), rel=1e-12)


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_scaled_identity_gaussians(method: str) -> None:
    # N(0, aI) vs N(0, bI) in d dims: Tr(aI + bI - 2 sqrt(ab) I) = d (sqrt a - sqrt b)^2.
    d, a, b = 10, 2.5, 0.4
    fid = frechet_distance(np.zeros(d), a * np.eye(d), np.zeros(d), b * np.eye(d), method=method)
    assert fid == pytest.approx(d * (np.sqrt(a) - np.sqrt(b)) ** 2, rel=1e-12)


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_commuting_covariances(method: str) -> None:
    # Sigma_i = Q diag(l_i) Q^T share eigenvectors, so Tr(...) = sum (sqrt l1 - sqrt l2)^2.
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    l1, l2 = rng.uniform(0.1, 3.0, 12), rng.uniform(0.1, 3.0, 12)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
    expected = float((mu1 - mu2) @ (mu1 - mu2) + ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum())
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-9)


def test_matches_direct_sqrtm_reference_on_random_features() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 24)) @ rng.standard_normal((24, 24))
    y = rng.standard_normal((300, 24)) * 1.3 + 0.2
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2))))
    assert fid_from_features(x, y) == pytest.approx(ref, rel=1e-10)
    assert fid_from_features(x, y, method="eigh") == pytest.approx(ref, rel=1e-8)


def test_identical_sets_have_zero_fid() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 8))
    assert abs(fid_from_features(x, x)) < 1e-9


def test_singular_covariances_fall_back() -> None:
    # Rank-deficient covariances (fewer samples than dimensions): both methods stay finite and agree.
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 20, rank=5), _random_spd(rng, 20, rank=5)
    mu = np.zeros(20)
    a = frechet_distance(mu, s1, mu, s2, method="sqrtm")
    b = frechet_distance(mu, s1, mu, s2, method="eigh")
    assert np.isfinite(a) and np.isfinite(b)
    assert a == pytest.approx(b, rel=1e-4, abs=1e-4)


def test_dimension_mismatch_is_reported() -> None:
    with pytest.raises(FeatureDimMismatchError, match="8 vs 6"):
        frechet_distance(np.zeros(8), np.eye(8), np.zeros(6), np.eye(6))
    a = FeatureStats.from_features(np.random.default_rng(0).standard_normal((10, 4)))
    b = FeatureStats.from_features(np.random.default_rng(1).standard_normal((10, 5)))
    with pytest.raises(FeatureDimMismatchError, match="4 .* vs 5"):
        fid_from_stats(a, b)


def test_different_extractors_are_refused() -> None:
    rng = np.random.default_rng(0)
    a = FeatureStats.from_features(rng.standard_normal((10, 4)), meta={"extractor": "inception-v3-tf2015"})
    b = FeatureStats.from_features(rng.standard_normal((10, 4)), meta={"extractor": "clip-ViT-B-32"})
    with pytest.raises(FeatureDimMismatchError, match="extractor differs"):
        fid_from_stats(a, b)


def test_nan_statistics_are_rejected() -> None:
    mu = np.zeros(3)
    mu[1] = np.nan
    with pytest.raises(MetricsError, match="NaN"):
        frechet_distance(mu, np.eye(3), np.zeros(3), np.eye(3))
    with pytest.raises(MetricsError, match="NaN"):
        fid_from_features(np.full((5, 3), np.nan), np.zeros((5, 3)))


def test_fid_floor_matches_the_closed_form_for_gaussian_features():
    # 1-D, both sets from N(0, 1): FID = (m1 - m2)^2 + (s1 - s2)^2 with s the ddof-1 sample std, so
    # E[FID] = 1/n + 1/m + 2 - 2 c4(n) c4(m), with E[s] = c4(k) = sqrt(2/(k-1)) Gamma(k/2) / Gamma((k-1)/2)
    from scipy.special import gammaln

    from skiptune.metrics import fid_floor

    def c4(k):
        return math.sqrt(2 / (k - 1)) * math.exp(gammaln(k / 2) - gammaln((k - 1) / 2))

    pool = np.random.default_rng(5).standard_normal((50_000, 1))
    n, m, draws = 20, 80, 2000
    values = fid_floor(pool, n, ref_n=m, draws=draws, seed=1)
    expected = 1 / n + 1 / m + 2 - 2 * c4(n) * c4(m)
    assert values.shape == (draws,) and (values >= 0).all()
    assert abs(values.mean() - expected) < 4 * values.std(ddof=1) / math.sqrt(draws)
    assert np.array_equal(values, fid_floor(pool, n, ref_n=m, draws=draws, seed=1))  # deterministic
    with pytest.raises(MetricsError, match="lower n or ref_n"):
        fid_floor(pool[:90], n, ref_n=m)


# -- broken statistics and too few samples ------------------------------------------------------------------------

def test_fid_on_no_more_samples_than_dimensions_warns_once_naming_both(recwarn) -> None:
    import skiptune.metrics.fid as fid_module

    fid_module._WARNED_FEW.clear()
    rng = np.random.default_rng(0)
    few, many = rng.normal(size=(12, 16)), rng.normal(size=(200, 16))
    fid_from_features(many, many[::-1])
    assert not [w for w in recwarn if "feature dimensions" in str(w.message)]  # 200 samples in 16 dimensions
    fid_from_features(few, many)
    fid_from_features(few, many)
    texts = [str(w.message) for w in recwarn if "feature dimensions" in str(w.message)]
    assert len(texts) == 1 and "12 samples of the first set" in texts[0] and "16 feature dimensions" in texts[0], texts
    from skiptune.metrics import fid_floor

    fid_floor(many, 10, ref_n=10, draws=2)  # small n on purpose: the floor does not warn
    assert len([w for w in recwarn if "feature dimensions" in str(w.message)]) == 1


def test_nan_statistics_name_whose_mean_is_broken() -> None:
    rng = np.random.default_rng(1)
    good = FeatureStats.from_features(rng.normal(size=(50, 4)), meta={"source": "generated"})
    bad = FeatureStats.from_moments(np.array([0.0, np.nan, 0.0, 0.0]), np.eye(4), 50, meta={"source": "ref.npz"})
    with pytest.raises(MetricsError, match=r"the mean \(mu2\) of the second set \(ref\.npz\) has 1 NaN"):
        fid_from_stats(good, bad)


@pytest.mark.parametrize(("change", "says"), [
    (lambda d: d["mu"].__setitem__(0, np.inf), "mu has 1 NaN/inf"),
    (lambda d: d["sigma"].__setitem__((0, 0), np.nan), "sigma has 1 NaN/inf"),
    (lambda d: d["sigma"].__setitem__((0, 1), 5.0), "not symmetric"),
    (lambda d: np.fill_diagonal(d["sigma"], -1.0), "negative variance"),
    (lambda d: d.__setitem__("n", np.asarray(1)), "n is 1"),
    (lambda d: d.__setitem__("features", np.zeros((3, 4), np.float32)), "features have shape"),
    (lambda d: d.__setitem__("meta", np.asarray("{broken")), "not a JSON object"),
], ids=["inf-mean", "nan-covariance", "asymmetric", "negative-variance", "count-1", "features-shape", "meta"])
def test_a_broken_statistics_file_is_refused_when_read(tmp_path, change, says) -> None:
    from skiptune.metrics import FeatureSet

    path = FeatureStats.from_features(np.random.default_rng(2).normal(size=(30, 4)), keep_features=True).save(
        tmp_path / "ref.npz")
    data = dict(np.load(path))
    change(data)
    np.savez(path, **data)
    for load in (FeatureStats.load, FeatureSet.load):
        with pytest.raises(MetricsError, match=says) as e:
            load(path)
        assert str(path) in str(e.value) and "recompute" in str(e.value)


def test_a_text_file_is_no_statistics_file(tmp_path) -> None:
    (tmp_path / "ref.npz").write_text("mu,sigma\n")
    with pytest.raises(MetricsError, match=r"ref\.npz is not a statistics \.npz \(mu, sigma\): it is a text file"):
        FeatureStats.load(tmp_path / "ref.npz")
