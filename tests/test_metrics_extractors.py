"""Extractor interface, registry, user modules, EDM pickle safety, optional CLIP, evaluate errors."""

from __future__ import annotations

import hashlib
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from skiptune.metrics import (
    ChecksumMismatchError,
    FeatureDimMismatchError,
    FeatureExtractor,
    FeatureStats,
    InceptionV3,
    MetricsError,
    UnsafePickleError,
    available_extractors,
    clip_extractor,
    evaluate,
    get_extractor,
    load_edm_inception,
    register_extractor,
    scan_pickle_globals,
    state_dict_sha256,
    unregister_extractor,
    wrap_module,
)


class _MeanColour(nn.Module):
    """Features = per-channel means: an extractor whose outputs are known exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_wrap_module_maps_uint8_to_the_declared_range() -> None:
    ext = wrap_module(_MeanColour(), "mean-colour", input_range=(-1.0, 1.0))
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[1] = 255
    out = ext(x)
    torch.testing.assert_close(out["features"], torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert ext.dims == {"features": 3} and ext.feature_for("fid") == "features"
    assert ext.weights_sha256 == f"state_dict:{state_dict_sha256(_MeanColour())}"
    # float input in [0, 1] is quantised like a PNG before the module sees it
    torch.testing.assert_close(
        ext(torch.full((1, 3, 2, 2), 0.5))["features"], torch.full((1, 3), 128 / 255 * 2 - 1)
    )


def test_wrap_module_resize_normalise_and_tuple_outputs() -> None:
    class Two(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)), torch.tensor(x.shape[2:], dtype=torch.float32).expand(x.shape[0], 2)

    ext = wrap_module(Two(), "two", size=(8, 6), mean=[0.5] * 3, std=[0.5] * 3, output_names=["m", "hw"])
    out = ext(torch.full((3, 3, 4, 4), 255, dtype=torch.uint8))
    torch.testing.assert_close(out["m"], torch.ones(3, 3))
    torch.testing.assert_close(out["hw"], torch.tensor([[8.0, 6.0]] * 3))
    assert "resize to 8x6" in ext.preprocessing


def test_registry_slot_for_domain_networks() -> None:
    def factory(scale: float = 1.0) -> FeatureExtractor:
        return wrap_module(_MeanColour(), f"demo-{scale}")

    register_extractor("demo-test", factory)
    try:
        assert "demo-test" in available_extractors()
        assert get_extractor("demo-test", scale=2.0).name == "demo-2.0"
        assert get_extractor("demo-test", weights=None).name == "demo-1.0"  # unset options are not passed
        with pytest.raises(ValueError, match="already registered"):
            register_extractor("demo-test", factory)
    finally:
        unregister_extractor("demo-test")
    with pytest.raises(KeyError, match="unknown feature extractor 'demo-test'"):
        get_extractor("demo-test")
    assert {"inception-v3", "inception-v3-edm-pkl", "clip"} <= set(available_extractors())


def test_evaluate_with_a_user_module_records_provenance() -> None:
    ext = wrap_module(_MeanColour(), "mean-colour")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (30, 3, 4, 4), dtype=np.uint8)
    b = rng.integers(0, 200, (40, 4, 4, 3), dtype=np.uint8)
    res = evaluate(a, b, metrics=("fid", "kid", "immd"), extractor=ext, kid_subset_size=20, kid_subsets=3)
    fa = a.astype(np.float64).mean(axis=(2, 3)) / 255
    fb = b.astype(np.float64).mean(axis=(1, 2)) / 255
    from skiptune.metrics import fid_from_features

    assert res["fid"]["value"] == pytest.approx(fid_from_features(fa, fb), rel=1e-5)
    assert res["kid"]["n"] == 30 and res["kid"]["n_ref"] == 40 and res["immd"]["sigma"] == 10.0
    assert res["fid"]["extractor"] == "mean-colour" and res["fid"]["resize"] == "uint8 -> float in [0, 1]"


def test_cmmd_needs_clip_features() -> None:
    """CMMD on another network's features would be that network's immd under CLIP's name: refused, before any
    feature is extracted; features of a CLIP extractor (named clip-...) are accepted."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (30, 3, 4, 4), dtype=np.uint8)
    b = rng.integers(0, 200, (40, 3, 4, 4), dtype=np.uint8)
    calls = []
    ext = wrap_module(_MeanColour(), "mean-colour")
    fn = ext.fn
    ext.fn = lambda x, w: calls.append(1) or fn(x, w)
    with pytest.raises(ValueError, match=r"cmmd needs CLIP .*'mean-colour'.*pip install 'skiptune\[clip\]'"):
        evaluate(a, b, metrics=("fid", "cmmd"), extractor=ext)
    with pytest.raises(ValueError, match="cmmd needs CLIP.*'inception-v3'"):
        evaluate(a, b, metrics=("cmmd",))  # by name: refused before the weights are even looked for
    assert not calls
    clip = wrap_module(_MeanColour(), "clip-stand-in")
    res = evaluate(a, b, metrics=("cmmd", "immd"), extractor=clip)
    assert res["cmmd"]["value"] == pytest.approx(res["immd"]["value"]) and res["cmmd"]["extractor"] == "clip-stand-in"
    # precomputed features carry their extractor: those of another network are refused too
    from skiptune.metrics import extract_features

    feats = extract_features(a, ext)
    with pytest.raises(ValueError, match="cmmd needs CLIP.*'mean-colour'"):
        evaluate(feats, feats, metrics=("cmmd",), extractor=clip)
    assert evaluate(extract_features(a, clip), extract_features(b, clip), metrics=("cmmd",))["cmmd"]["value"] >= 0


def test_get_extractor_refuses_options_the_network_does_not_take() -> None:
    from skiptune.core.errors import InputError

    register_extractor("no-options-test", lambda: wrap_module(_MeanColour(), "plain"), overwrite=True)
    try:
        with pytest.raises(InputError, match="'no-options-test' takes no option weights; .* none"):
            get_extractor("no-options-test", weights="w.pth")
        assert get_extractor("no-options-test", weights=None).name == "plain"  # unset: not passed
    finally:
        unregister_extractor("no-options-test")
    with pytest.raises(InputError, match="takes no option foo; the options it takes: weights, expected_sha256"):
        get_extractor("inception-v3", foo=1)
    # a factory with **kwargs that hands them to a function without that option
    with pytest.raises(InputError, match="'digits-classifier' takes no option expected_sha256"):
        get_extractor("digits-classifier", expected_sha256="any")
    with pytest.raises(InputError, match="only be given with an extractor name"):
        get_extractor(wrap_module(_MeanColour(), "plain"), weights="w.pth")


def test_evaluate_errors() -> None:
    ext = wrap_module(_MeanColour(), "mean-colour")
    a = np.zeros((5, 3, 2, 2), np.uint8)
    a[:, 0] = np.arange(5)[:, None, None]
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(a, a, metrics=("fod",), extractor=ext)
    with pytest.raises(ValueError, match="need a reference"):
        evaluate(a, None, metrics=("fid",), extractor=ext)
    ref = FeatureStats.from_features(np.random.default_rng(0).standard_normal((10, 7)))
    with pytest.raises(FeatureDimMismatchError, match="3 .* vs 7"):
        evaluate(a, ref, extractor=ext)
    ref3 = FeatureStats.from_features(np.random.default_rng(0).standard_normal((10, 3)))
    with pytest.raises(MetricsError, match="keep_features=True"):
        evaluate(a, ref3, metrics=("kid",), extractor=ext)
    other = FeatureStats.from_features(
        np.ones((10, 3)) + np.eye(10, 3), meta={"extractor": "inception-v3-tf2015"}
    )
    with pytest.raises(FeatureDimMismatchError, match="same network"):
        evaluate(a, other, extractor=ext)


# -- EDM pickle ----------------------------------------------------------------------------------


class _Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_scanner_names_globals_without_running_them(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = pickle.dumps({"net": _Boom(), "w": torch.ones(2)})
    found = scan_pickle_globals(data)
    assert "builtins.exec" in found and "torch._utils._rebuild_tensor_v2" in found
    (tmp_path / "inception-2015-12-05.pkl").write_bytes(data)
    with pytest.raises(UnsafePickleError, match=r"builtins\.exec.*trust_code=True"):
        load_edm_inception(tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_state_dict_pickle_loads_safely(tmp_path) -> None:
    torch.manual_seed(0)
    net = InceptionV3(width=1 / 16, num_classes=8).eval()
    with torch.no_grad():  # He-normal convs: O(1) activations (the default init decays to subnormals: slow)
        for p in (p for p in net.parameters() if p.dim() == 4):
            p.normal_(0, (2 / p[0].numel()) ** 0.5)
    path = tmp_path / "inception-2015-12-05.pkl"
    path.write_bytes(pickle.dumps(net.state_dict()))
    assert all(not g.startswith(("builtins", "os", "posix")) for g in scan_pickle_globals(path.read_bytes()))
    ext = load_edm_inception(path)
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(ext(x)["pool"], net(x)["pool"])
    # the name every extractor takes (--weights), the former name, and the registry; checksums when asked
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    for kwargs in ({"weights": path}, {"path": path}, {"weights": path, "expected_sha256": sha},
                   {"weights": path, "expected_sha256": "any"}):
        assert load_edm_inception(**kwargs).weights_sha256 == sha
    assert get_extractor("inception-v3-edm-pkl", weights=str(path)).weights_sha256 == sha
    with pytest.raises(ChecksumMismatchError, match=f"has sha256 {sha}, expected {'0' * 64}"):
        load_edm_inception(weights=path, expected_sha256="0" * 64)
    with pytest.raises(ValueError, match="64 hexadecimal digits or 'any'"):
        load_edm_inception(weights=path, expected_sha256="abc")
    with pytest.raises(ValueError, match="give the pickle once"):
        load_edm_inception(weights=path, path=tmp_path / "other.pkl")


def test_trusted_detector_pickle_is_wrapped(tmp_path, monkeypatch) -> None:
    # A stand-in for EDM's detector: a class from a module that must be importable, called with
    # return_features=True (pool) and no_output_bias=True (probabilities).
    (tmp_path / "fake_detector.py").write_text(
        "import torch\n"
        "class Detector(torch.nn.Module):\n"
        "    def forward(self, x, return_features=False, no_output_bias=False):\n"
        "        f = x.float().mean(dim=(2, 3)).repeat(1, 4)\n"
        "        return f if return_features else torch.softmax(f, dim=1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_detector

    path = tmp_path / "inception-2015-12-05.pkl"
    path.write_bytes(pickle.dumps(fake_detector.Detector()))
    with pytest.raises(UnsafePickleError, match="fake_detector.Detector"):
        load_edm_inception(path)
    ext = load_edm_inception(path, trust_code=True)
    assert ext.feature_for("is") == "probs" and ext.feature_for("fid") == "pool"
    out = ext(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), features=["pool", "probs"])
    assert out["pool"].shape == (2, 12)
    torch.testing.assert_close(out["probs"].sum(1), torch.ones(2))
    sys.modules.pop("fake_detector", None)


def test_missing_edm_pickle(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SKIPTUNE_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pkl"):
        load_edm_inception()


# -- CLIP (optional) -----------------------------------------------------------------------------


def test_clip_without_open_clip_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)
    from skiptune.core.errors import SkiptuneError

    with pytest.raises(ImportError, match=r"pip install 'skiptune\[clip\]'") as info:
        clip_extractor()
    assert isinstance(info.value, SkiptuneError)  # the command line prints it as one line


def test_clip_extractor_with_a_stand_in_open_clip(tmp_path, monkeypatch) -> None:
    class Visual(nn.Module):
        image_size = 6

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = Visual()
            self.proj = nn.Linear(3, 4, bias=False)

        def encode_image(self, x):
            assert x.shape[2:] == (6, 6)
            return self.proj(x.mean(dim=(2, 3)))

    fake = types.ModuleType("open_clip")
    fake.create_model_and_transforms = lambda name, pretrained, device: (Model(), None, None)
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    with pytest.raises(FileNotFoundError, match="pretrained="):
        clip_extractor(pretrained=tmp_path / "none.bin")
    ckpt = tmp_path / "clip.bin"
    ckpt.write_bytes(b"weights")
    ext = clip_extractor("ViT-B-32", ckpt)
    emb = ext(torch.randint(0, 256, (3, 3, 12, 9), dtype=torch.uint8))["embedding"]
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert ext.name == "clip-ViT-B-32" and len(ext.weights_sha256) == 64
    # weights= (the name the command line passes) is the checkpoint too, through the registry as well
    sha = hashlib.sha256(b"weights").hexdigest()
    assert get_extractor("clip", weights=str(ckpt)).weights_sha256 == sha == ext.weights_sha256
    assert clip_extractor(weights=ckpt, expected_sha256=sha.upper()).name == "clip-ViT-B-32"
    with pytest.raises(ChecksumMismatchError, match=f"has sha256 {sha}"):
        clip_extractor(weights=ckpt, expected_sha256="1" * 64)
    with pytest.raises(ValueError, match="give the CLIP checkpoint once"):
        clip_extractor("ViT-B-32", tmp_path / "a.bin", weights=ckpt)


def test_edm_style_persistent_pickle_is_refused_without_running_its_source(tmp_path, monkeypatch) -> None:
    # The layout EDM/StyleGAN3 use: _reconstruct_persistent_obj(meta) with the class's module source
    # inside meta. The safe path must name the class and never exec that source.
    fake = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called while loading safely
        raise AssertionError("must not run")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    fake._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", fake)

    class Detector:
        def __reduce__(self):
            meta = {
                "type": "class",
                "class_name": "InceptionV3Detector",
                "module_src": f"open({str(tmp_path / 'PWNED')!r}, 'w')",
                "state": {"weights": torch.ones(3)},
            }
            return (_reconstruct_persistent_obj, (meta,))

    path = tmp_path / "inception-2015-12-05.pkl"
    path.write_bytes(pickle.dumps(Detector()))
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")
    assert "torch_utils.persistence._reconstruct_persistent_obj" in scan_pickle_globals(path.read_bytes())
    with pytest.raises(
        UnsafePickleError, match="InceptionV3Detector.*torch-fidelity weights.*trust_code=True"
    ):
        load_edm_inception(path)
    assert not (tmp_path / "PWNED").exists()


def test_progress_bar_on_request(capsys) -> None:
    from skiptune.metrics import extract_features

    ext = wrap_module(_MeanColour(), "mean-colour")
    x = np.zeros((5, 3, 2, 2), np.uint8)
    extract_features(x, ext, batch_size=2)
    assert "features [mean-colour]" not in capsys.readouterr().err
    extract_features(x, ext, batch_size=2, progress=True)
    assert "features [mean-colour]" in capsys.readouterr().err
