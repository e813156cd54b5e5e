"""The FID Inception-V3: layout, TF-1 resize, weights loading and the whole path on a tiny random copy."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from skiptune.metrics import (
    INCEPTION_FILENAME,
    INCEPTION_SHA256,
    FeatureSet,
    FeatureStats,
    InceptionV3,
    MetricsError,
    MissingWeightsError,
    compute_reference,
    evaluate,
    extract_features,
    find_inception_weights,
    frechet_distance,
    inception_v3,
    resize_bilinear_tf1,
)
from skiptune.metrics.errors import ChecksumMismatchError


def _tiny(width: float = 1 / 8, num_classes: int = 16) -> InceptionV3:
    """A random Inception (default: width 1/8, 16 classes) with He-normal convs, so activations neither
    vanish nor explode (the default init decays to subnormal floats, which are very slow on CPUs)."""
    torch.manual_seed(0)
    net = InceptionV3(width=width, num_classes=num_classes)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("conv.weight"):
                p.normal_(0, math.sqrt(2 / p[0].numel()))
            elif name == "fc.weight":
                p.normal_(0, 1 / math.sqrt(p.shape[1]))
    return net.eval()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> tuple[str, str]:
    path = tmp_path_factory.mktemp("w") / INCEPTION_FILENAME
    torch.save(_tiny().state_dict(), path)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_matches_the_2015_graph() -> None:
    # 94 conv+BN units (stem 5, 3 x A 7, B 4, 4 x C 10, D 6, 2 x E 9) -> 94 * 5 tensors + fc weight/bias.
    net = InceptionV3(width=1 / 8)
    keys = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(keys) == 94 * 5 + 2
    full = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "fc.weight": (1008, 2048),
    }
    shapes = {k: tuple(v.shape) for k, v in InceptionV3().state_dict().items()}
    for k, s in full.items():
        assert shapes[k] == s
    assert InceptionV3().pool_dim == 2048


def test_tf1_resize_hand_values() -> None:
    # 2 -> 4 with align_corners=False, no half-pixel offset: source coords 0, .5, 1, 1.5 ->
    # [a, (a+b)/2, b, b] along each axis.
    x = torch.tensor([[0.0, 8.0], [4.0, 12.0]]).view(1, 1, 2, 2)
    out = resize_bilinear_tf1(x, (4, 4))[0, 0]
    row0 = [0.0, 4.0, 8.0, 8.0]
    row1 = [2.0, 6.0, 10.0, 10.0]
    row2 = [4.0, 8.0, 12.0, 12.0]
    assert out.tolist() == [row0, row1, row2, row2]
    y = torch.rand(1, 3, 5, 7)
    assert torch.equal(resize_bilinear_tf1(y, (5, 7)), y)


def test_full_size_forward_on_random_weights() -> None:
    net = _tiny(1.0, 1008)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        out = net(x, features=("pool", "logits_unbiased", "logits"))
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    torch.testing.assert_close(out["logits"] - out["logits_unbiased"], net.fc.bias.expand(2, -1))
    assert all(torch.isfinite(v).all() for v in out.values())


def test_missing_weights_error_says_which_file_and_where(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SKIPTUNE_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(MissingWeightsError) as err:
        find_inception_weights()
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for needle in (INCEPTION_FILENAME, INCEPTION_SHA256, "SKIPTUNE_WEIGHTS", str(tmp_path), "weights="):
        assert needle in msg
    with pytest.raises(MissingWeightsError, match=INCEPTION_FILENAME):
        inception_v3(tmp_path / "elsewhere.pth")


def test_checksum_is_checked(tiny_weights) -> None:
    path, sha = tiny_weights
    with pytest.raises(ChecksumMismatchError, match=f"has sha256 {sha}.*expected_sha256=None.*--weights-sha256 any"):
        inception_v3(path)
    # 'any' (what --weights-sha256 any passes) or the file's own checksum accepts it, recording that checksum
    for expected in ("any", "ANY", sha, sha.upper(), None):
        ext = inception_v3(path, expected_sha256=expected)
        assert ext.weights_sha256 == sha and ext.name == "inception-v3-custom"
    with pytest.raises(ChecksumMismatchError, match=f"expected {'a' * 64}"):
        inception_v3(path, expected_sha256="a" * 64)
    with pytest.raises(ValueError, match="64 hexadecimal digits or 'any'"):
        inception_v3("/no/such/file.pth", expected_sha256="abc")  # checked before the file is looked for


def test_weights_found_through_env_dir(tiny_weights, monkeypatch) -> None:
    path, sha = tiny_weights
    monkeypatch.setenv("SKIPTUNE_WEIGHTS", str(__import__("pathlib").Path(path).parent))
    ext = inception_v3(expected_sha256=None)
    assert ext.weights_sha256 == sha and ext.name == "inception-v3-custom"
    assert ext.dims == {"pool": 256, "logits_unbiased": 16, "logits": 16}


def test_tiny_inception_whole_path(tiny_weights, tmp_path) -> None:
    """load .pth -> features -> statistics -> FID (and the other metrics), with provenance."""
    path, sha = tiny_weights
    ext = inception_v3(path, expected_sha256=None)
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=gen)
    b = (torch.rand(10, 3, 16, 16, generator=gen) ** 2).numpy().transpose(0, 2, 3, 1)  # float NHWC in [0, 1]

    # features equal the network's own forward, whatever the batch size
    fs = extract_features(a, ext, batch_size=5, cache=tmp_path / "gen.npz")
    with torch.no_grad():
        direct = _tiny()(a[:3], features=("pool",))["pool"]
    torch.testing.assert_close(torch.from_numpy(fs.get("pool").features[:3]), direct, rtol=1e-4, atol=1e-5)
    assert fs.meta["weights_sha256"] == sha and fs.meta["n"] == 12

    ref = compute_reference(b, tmp_path / "ref.npz", extractor=ext, keep_features=True, batch_size=7)
    res = evaluate(
        tmp_path / "gen.npz",
        tmp_path / "ref.npz",
        metrics=("fid", "is", "pr", "kid", "mmd", "immd"),
        extractor=ext,
        kid_subsets=4,
        kid_subset_size=8,
        is_splits=3,
    )
    st_a = FeatureStats.from_features(fs.get("pool").features)
    st_b = FeatureStats.from_features(ref.get("pool").features)
    assert res["fid"]["value"] == pytest.approx(
        frechet_distance(st_a.mean, st_a.cov, st_b.mean, st_b.cov), rel=1e-6
    )
    assert res["fid"]["value"] > 0
    for rec in res.values():
        assert rec["extractor"] == "inception-v3-custom" and rec["weights_sha256"] == sha
        assert rec["resize"].startswith("uint8 RGB -> TF1 bilinear") and rec["n"] == 12
    assert res["fid"]["n_ref"] == 10 and res["is"]["feature"] == "logits_unbiased"
    assert 1.0 <= res["is"]["mean"] <= 16.0
    assert 0.0 <= res["pr"]["precision"] <= 1.0 and np.isfinite(res["kid"]["mean"])
    assert all(np.isfinite(v) for v in res["mmd"]["values"].values()) and res["immd"]["value"] >= 0

    # the same number from the images directly
    again = evaluate(a, tmp_path / "ref.npz", metrics=("fid",), extractor=ext)
    assert again["fid"]["value"] == pytest.approx(res["fid"]["value"], rel=1e-6)
    # the reference file is EDM-compatible and loads as a feature set
    assert FeatureSet.load(tmp_path / "ref.npz").meta["extractor"] == "inception-v3-custom"


def test_cache_is_reused_and_invalidated(tiny_weights, tmp_path) -> None:
    path, _ = tiny_weights
    ext = inception_v3(path, expected_sha256=None)
    a = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    first = extract_features(a, ext, cache=tmp_path / "c.npz")
    calls = []
    fn = ext.fn
    ext.fn = lambda x, w: calls.append(1) or fn(x, w)
    extract_features(a, ext, cache=tmp_path / "c.npz")
    assert not calls  # loaded from the cache
    extract_features(a[:3], ext, cache=tmp_path / "c.npz")
    assert calls  # a different source: recomputed
    assert first.n == 4


def test_metric_whose_feature_was_not_extracted_is_explained(tiny_weights, tmp_path) -> None:
    path, _ = tiny_weights
    ext = inception_v3(path, expected_sha256=None)
    ref = compute_reference(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), tmp_path / "r.npz", extractor=ext)
    assert set(ref.stats) == {"pool"}
    with pytest.raises(MetricsError, match="'logits_unbiased' was not extracted"):
        evaluate(tmp_path / "r.npz", metrics=("is",))
