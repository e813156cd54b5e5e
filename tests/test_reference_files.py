"""Reference statistics files: EDM's fid-refs layout (read and written), what they record, and the refusals of a
reference that the images being scored cannot be compared with."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from skiptune.cli import main
from skiptune.core.errors import InputError
from skiptune.experiment import Scorer, load_reference
from skiptune.experiment.reference import check_reference, reference_id
from skiptune.metrics import FeatureExtractor, FeatureSet, extract_features, register_extractor, unregister_extractor

PIXELS = "test-ref-pixels"


def _pool(x: torch.Tensor) -> torch.Tensor:
    """The 12 channel means of the four quadrants of uint8 NCHW images, in [0, 1]."""
    return torch.nn.functional.avg_pool2d(x.float() / 255.0, x.shape[-1] // 2).flatten(1)


def _pixels(device: str = "cpu") -> FeatureExtractor:
    return FeatureExtractor(PIXELS, lambda x, wanted: {"f": _pool(x)}, {"f": 12}, device=device)


@pytest.fixture
def pixels():
    register_extractor(PIXELS, _pixels, overwrite=True)
    yield _pixels()
    unregister_extractor(PIXELS)


def _inception_named(dim: int | None = 2048, name: str = "inception-v3-custom") -> FeatureExtractor:
    """Stands in for the FID Inception where only its name, feature and dimension matter (never run)."""
    return FeatureExtractor(name, lambda x, wanted: {}, {"pool": dim}, preprocessing="TF1 bilinear to 299x299",
                            metric_features={"fid": "pool"})


def _images(seed: int, n: int = 300, size: int = 8, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 256, size=(n, size, size, 3)) + shift, 0, 255).astype(np.uint8)


def _features(images_nhwc: np.ndarray) -> np.ndarray:
    """The pixel features computed independently: float64 quadrant means of each channel."""
    x = images_nhwc.astype(np.float64) / 255.0
    h, w = x.shape[1] // 2, x.shape[2] // 2
    quads = [x[:, i * h:(i + 1) * h, j * w:(j + 1) * w] for i in range(2) for j in range(2)]
    # channel-major order, as flatten(1) of an [N, C, 2, 2] pooling gives
    return np.stack([q.mean(axis=(1, 2)) for q in quads], axis=2).reshape(len(x), 12)


def _fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


def _nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()


def _edm_file(path, feats: np.ndarray) -> str:
    """A reference as EDM's fid.py writes it: np.savez(dest, mu=mu, sigma=sigma), float64, nothing else."""
    np.savez(path, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    return str(path)


# -- EDM's files read here ---------------------------------------------------------------------------------------

def test_an_edm_file_scores_as_numpy_computes_it(tmp_path, pixels, capsys):
    real, fake = _images(0), _images(1, shift=30)
    ref_path = _edm_file(tmp_path / "edm.npz", _features(real))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no assumption to name for a network that is not the Inception
        ref = load_reference(ref_path, pixels, resolution=8, resize=pixels.preprocessing)
    assert set(ref.stats) == {"f"} and ref.get("f").dim == 12  # its one feature is taken as the FID feature
    scorer = Scorer(pixels, ref)
    assert scorer.fid(_nchw(fake)) == pytest.approx(_fid(_features(fake), _features(real)), rel=1e-6)
    assert scorer.fid(_nchw(real)) == pytest.approx(0.0, abs=1e-9)
    spec = scorer.spec()  # EDM's files record no count: the stored runs name the reference by its id alone
    assert spec.ref_n is None and spec.ref == reference_id(ref, "f")

    # the same file through `skiptune eval`
    np.savez(tmp_path / "fake.npz", images=fake)
    out = tmp_path / "m.json"
    assert main(["eval", "--images", str(tmp_path / "fake.npz"), "--ref", ref_path, "--features", PIXELS,
                 "--no-progress", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["fid"]["value"] == pytest.approx(_fid(_features(fake), _features(real)),
                                                                        rel=1e-6)
    capsys.readouterr()


def test_an_edm_file_with_the_inception_is_taken_as_its_pool_features_with_a_warning(tmp_path):
    ref_path = _edm_file(tmp_path / "edm.npz", np.random.default_rng(0).normal(size=(3000, 2048)))
    with pytest.warns(UserWarning) as record:
        ref = load_reference(ref_path, _inception_named(), resolution=64)
    (w,) = [r for r in record if "provenance" in str(r.message)]
    text = str(w.message)
    assert "\n" not in text
    for needle in ("records no provenance", "2048-d Inception-V3 pool features", "64x64", "not resized"):
        assert needle in text
    assert set(ref.stats) == {"pool"} and ref.get("pool").meta["feature"] == "pool"
    # EDM's pickle declares its dimension on first use: 2048 is assumed for its pool features
    with pytest.warns(UserWarning, match="records no provenance"):
        check_reference(FeatureSet.load(ref_path), _inception_named(None, "inception-v3-tf2015-edm-pkl"))


@pytest.mark.parametrize("extractor, dim, says", [
    (lambda: _inception_named(), 64, ["64-d statistics", "'inception-v3-custom' gives 2048-d 'pool'"]),
    (lambda: _inception_named(None, "inception-v3-tf2015-edm-pkl"), 64, ["64-d statistics", "gives 2048-d"]),
    (_pixels, 2048, ["2048-d statistics", f"{PIXELS!r} gives 12-d", "--features inception-v3"]),
], ids=["inception", "edm-pkl", "other-network"])
def test_an_edm_file_of_another_dimension_is_refused(tmp_path, extractor, dim, says):
    ref_path = _edm_file(tmp_path / "edm.npz", np.random.default_rng(0).normal(size=(dim + 10, dim)))
    with pytest.raises(InputError) as err:
        load_reference(ref_path, extractor(), resolution=64)
    for needle in (ref_path, *says, "compute the reference with the same feature network"):
        assert needle in str(err.value)


# -- `skiptune ref` writes EDM's layout ---------------------------------------------------------------------------

def test_ref_format_edm_writes_mu_sigma_and_the_provenance(tmp_path, pixels, capsys):
    real, fake = _images(2), _images(3, shift=-25)
    np.savez(tmp_path / "real.npz", images=real)
    out = tmp_path / "ref.npz"
    assert main(["ref", "--data", str(tmp_path / "real.npz"), "--out", str(out), "--features", PIXELS,
                 "--format", "edm", "--no-progress"]) == 0
    assert "edm layout" in capsys.readouterr().out

    # what EDM's fid.py does with a reference: dict(np.load(f)), then ref['mu'] and ref['sigma']
    with open(out, "rb") as f:
        data = dict(np.load(f))
    assert set(data) == {"mu", "sigma", "meta"}
    assert data["mu"].dtype == np.float64 and data["mu"].shape == (12,)
    assert data["sigma"].dtype == np.float64 and data["sigma"].shape == (12, 12)
    assert data["meta"].dtype.kind == "U" and data["meta"].shape == ()  # a plain string: no pickle involved
    want = _features(real)  # float64 here; the feature network returns float32 features (7 digits)
    np.testing.assert_allclose(data["mu"], want.mean(0), rtol=1e-6)
    np.testing.assert_allclose(data["sigma"], np.cov(want, rowvar=False), rtol=1e-4, atol=1e-9)
    meta = json.loads(str(data["meta"]))
    assert {k: meta[k] for k in ("extractor", "feature", "dim", "resize", "image_size", "n", "layout")} == {
        "extractor": PIXELS, "feature": "f", "dim": 12, "resize": "none", "image_size": [8, 8], "n": 300,
        "layout": "edm"}

    # read back: the count comes from meta, and eval scores against it as numpy does
    ref = FeatureSet.load(out)
    assert ref.get("f").n == 300 and ref.image_size == (8, 8)
    np.savez(tmp_path / "fake.npz", images=fake)
    js = tmp_path / "m.json"
    assert main(["eval", "--images", str(tmp_path / "fake.npz"), "--ref", str(out), "--features", PIXELS,
                 "--no-progress", "--json", str(js)]) == 0
    res = json.loads(js.read_text())["fid"]
    assert res["value"] == pytest.approx(_fid(_features(fake), want), rel=1e-6) and res["n_ref"] == 300


def test_ref_default_format_records_the_same_provenance(tmp_path, pixels, capsys):
    np.savez(tmp_path / "real.npz", images=_images(4, n=40))
    out = tmp_path / "ref.npz"
    assert main(["ref", "--data", str(tmp_path / "real.npz"), "--out", str(out), "--features", PIXELS,
                 "--keep-features", "--no-progress"]) == 0
    with np.load(out) as data:
        assert {"mu", "sigma", "n", "meta", "features"} <= set(data.files)
        meta = json.loads(str(data["meta"]))
        assert int(data["n"]) == 40
    assert (meta["extractor"], meta["feature"], meta["dim"], meta["resize"], meta["image_size"], meta["n"]) == (
        PIXELS, "f", 12, "none", [8, 8], 40)
    capsys.readouterr()


def test_ref_format_edm_with_raw_features_is_refused(tmp_path, pixels, capsys):
    np.savez(tmp_path / "real.npz", images=_images(5, n=10))
    out = tmp_path / "ref.npz"
    assert main(["ref", "--data", str(tmp_path / "real.npz"), "--out", str(out), "--features", PIXELS,
                 "--format", "edm", "--keep-features", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--format edm" in err and "--keep-features" in err and not out.exists()


# -- refusals of a reference the images cannot be compared with ----------------------------------------------------

def _skiptune_file(path, ext: FeatureExtractor, images: np.ndarray, layout: str = "skiptune", **changes) -> str:
    fs = extract_features(images, ext, features=["f"], keep=False)
    fs.save(path, layout=layout)
    if changes:
        with np.load(path) as f:
            data = dict(f)
        meta = {**json.loads(str(data.pop("meta"))), **changes}
        np.savez(path, **data, meta=np.asarray(json.dumps(meta)))
    return str(path)


REFUSALS = [
    ("network", dict(extractor="digits-classifier"),
     ["holds 'digits-classifier' features", f"the feature network is {PIXELS!r}", "--features digits-classifier"]),
    ("weights", dict(weights_sha256="ab" * 32),
     ["weights with sha256 abababab", "--weights FILE", "compute the reference with these weights"]),
    ("feature", dict(feature="logits"),
     ["holds the 'logits' features", "uses its 'f' features", f"compute the reference with {PIXELS!r}"]),
    ("resize", dict(resize="bicubic to 299x299"),
     ["resize policy 'bicubic to 299x299'", "go through 'none'", f"--features {PIXELS}"]),
    ("resolution", dict(image_size=[16, 16]),
     ["statistics of 16x16 images", "images being scored are 8x8", "use a reference of the data at 8x8"]),
]


@pytest.mark.parametrize("layout", ["skiptune", "edm"])
@pytest.mark.parametrize("what, changes, says", [pytest.param(*r, id=r[0]) for r in REFUSALS])
def test_a_reference_of_other_features_resize_or_resolution_is_refused(tmp_path, pixels, layout, what, changes,
                                                                         says):
    ext = pixels
    ext.weights_sha256 = "cd" * 32
    path = _skiptune_file(tmp_path / "ref.npz", ext, _images(6, n=30), layout=layout,
                          **{"weights_sha256": "cd" * 32, **changes})
    with pytest.raises(InputError) as err:
        load_reference(path, ext, resolution=8, resize=ext.preprocessing)
    for needle in (path, *says):
        assert needle in str(err.value), str(err.value)
    # the unchanged file is accepted; the checks left out (None) accept the changed one where they are its only fault
    ok = _skiptune_file(tmp_path / "ok.npz", ext, _images(6, n=30), layout=layout, weights_sha256="cd" * 32)
    load_reference(ok, ext, resolution=8, resize=ext.preprocessing)
    if what in ("resize", "resolution"):
        load_reference(path, ext)


def test_scorer_load_refuses_another_resolution_before_any_sampling(tmp_path, pixels):
    path = _skiptune_file(tmp_path / "ref.npz", pixels, _images(7, n=30))
    with pytest.raises(InputError, match=r"8x8 images but the images being scored are 16x16"):
        Scorer.load(PIXELS, path, resolution=16)
    assert Scorer.load(PIXELS, path, resolution=(8, 8), resize="none").spec().ref_n == 30


def test_eval_refuses_a_reference_of_another_resolution(tmp_path, pixels, capsys):
    ref = _skiptune_file(tmp_path / "ref.npz", pixels, _images(8, n=30))
    np.savez(tmp_path / "big.npz", images=_images(9, n=30, size=16))
    js = tmp_path / "m.json"
    argv = ["eval", "--images", str(tmp_path / "big.npz"), "--ref", ref, "--features", PIXELS, "--no-progress",
            "--json", str(js)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--ref {ref} holds statistics of 8x8 images but the images being scored are 16x16" in err
    assert not js.exists()
    # reference images (not statistics) of another size than the images scored are refused too
    np.savez(tmp_path / "small.npz", images=_images(10, n=30))
    assert main([*argv[:4], str(tmp_path / "small.npz"), *argv[5:]]) == 2
    assert "holds 8x8 images but the images being scored (--images) are 16x16" in capsys.readouterr().err
