"""Streaming statistics: agreement with numpy, batch-size and merge-order independence, .npz files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skiptune.metrics import FeatureSet, FeatureStats, MetricsError, TooFewSamplesError


@pytest.fixture
def feats() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((257, 12)) @ rng.standard_normal((12, 12)) + 3.0).astype(np.float32)


def test_mean_and_unbiased_covariance_match_numpy(feats: np.ndarray) -> None:
    st = FeatureStats.from_features(feats)
    x = feats.astype(np.float64)
    np.testing.assert_allclose(st.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    assert st.n == 257 and st.mean.dtype == np.float64


@pytest.mark.parametrize("batch", [1, 7, 64, 257])
def test_independent_of_batch_size(feats: np.ndarray, batch: int) -> None:
    whole = FeatureStats.from_features(feats)
    st = FeatureStats(12)
    for i in range(0, len(feats), batch):
        st.update(feats[i : i + batch])
    np.testing.assert_allclose(st.mean, whole.mean, rtol=1e-13)
    np.testing.assert_allclose(st.cov, whole.cov, rtol=1e-11, atol=1e-13)


def test_independent_of_merge_order(feats: np.ndarray) -> None:
    parts = [FeatureStats.from_features(p) for p in np.array_split(feats, [50, 51, 200])]
    left = ((parts[0] + parts[1]) + parts[2]) + parts[3]
    right = parts[3].merge(parts[2].merge(parts[1].merge(parts[0])))
    whole = FeatureStats.from_features(feats)
    for st in (left, right):
        assert st.n == whole.n
        np.testing.assert_allclose(st.mean, whole.mean, rtol=1e-13)
        np.testing.assert_allclose(st.cov, whole.cov, rtol=1e-11, atol=1e-13)


def test_kept_features_follow_updates_and_merges(feats: np.ndarray) -> None:
    a = FeatureStats(12, keep_features=True).update(feats[:100]).update(feats[100:150])
    b = FeatureStats.from_features(feats[150:], keep_features=True)
    np.testing.assert_array_equal((a + b).features, feats)
    assert FeatureStats.from_features(feats).features is None


def test_npz_round_trip_with_edm_keys(tmp_path, feats: np.ndarray) -> None:
    meta = {"extractor": "x", "weights_sha256": "abc", "resize": "none", "feature": "pool"}
    st = FeatureStats.from_features(feats, keep_features=True, meta=meta)
    path = st.save(tmp_path / "ref.npz")
    with np.load(path) as raw:  # what EDM's fid.py reads
        assert {"mu", "sigma"} <= set(raw.keys())
        np.testing.assert_array_equal(raw["mu"], st.mean)
        np.testing.assert_array_equal(raw["sigma"], st.cov)
        assert int(raw["n"]) == 257 and json.loads(str(raw["meta"])) == meta
    back = FeatureStats.load(path)
    np.testing.assert_array_equal(back.mean, st.mean)
    np.testing.assert_allclose(back.cov, st.cov, rtol=1e-12)
    np.testing.assert_array_equal(back.features, feats)
    assert back.meta == meta and back.n == 257
    # loaded statistics keep merging exactly like fresh ones
    more = feats[:10]
    np.testing.assert_allclose(
        (back + FeatureStats.from_features(more)).cov,
        FeatureStats.from_features(np.concatenate([feats, more])).cov,
        rtol=1e-10,
        atol=1e-12,
    )


def test_edm_reference_without_counts_loads_read_only(tmp_path) -> None:
    mu, sigma = np.arange(3.0), np.diag([1.0, 2.0, 3.0])
    np.savez(tmp_path / "edm.npz", mu=mu, sigma=sigma)
    st = FeatureStats.load(tmp_path / "edm.npz")
    np.testing.assert_array_equal(st.mean, mu)
    np.testing.assert_array_equal(st.cov, sigma)
    assert not st.has_counts
    with pytest.raises(MetricsError, match="without sample counts"):
        st.update(np.zeros((2, 3)))
    with pytest.raises(MetricsError, match="cannot be merged"):
        st + FeatureStats.from_features(np.zeros((2, 3)))


def test_feature_set_round_trip(tmp_path, feats: np.ndarray) -> None:
    meta = {
        "extractor": "e",
        "weights_sha256": "s",
        "resize": "r",
        "n": 257,
        "metric_features": {"is": "logits"},
    }
    logits = feats[:, :5] * 2
    fs = FeatureSet(
        stats={
            "pool": FeatureStats.from_features(feats),
            "logits": FeatureStats.from_features(logits, keep_features=True),
        },
        meta=meta,
        primary="pool",
    )
    path = fs.save(tmp_path / "set.npz")
    back = FeatureSet.load(path)
    assert back.primary == "pool" and back.feature_for("is") == "logits" and back.feature_for("fid") == "pool"
    np.testing.assert_allclose(back.get("pool").cov, fs.get("pool").cov, rtol=1e-12)
    np.testing.assert_array_equal(back.get("logits").features, logits)
    assert back.get("pool").features is None
    with pytest.raises(MetricsError, match="keep_features=True"):
        back.raw("pool", "KID")
    # the top level is an EDM-compatible reference of the primary feature
    np.testing.assert_allclose(FeatureStats.load(path).mean, feats.astype(np.float64).mean(0), rtol=1e-12)


def test_too_few_samples_and_bad_shapes() -> None:
    st = FeatureStats(4).update(np.ones((1, 4)))
    with pytest.raises(TooFewSamplesError, match="at least 2 samples, got 1"):
        _ = st.cov
    with pytest.raises(TooFewSamplesError, match="at least 1"):
        _ = FeatureStats(4).mean
    with pytest.raises(MetricsError, match="dimension 5"):
        FeatureStats(4).update(np.ones((2, 5)))
    with pytest.raises(MetricsError, match=r"2-D array \[N, d\]"):
        FeatureStats(4).update(np.ones(4))
