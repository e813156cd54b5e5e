"""``skiptune ref`` / ``skiptune eval`` through the CLI entry point."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from skiptune.cli import main
from skiptune.metrics import FeatureExtractor, register_extractor, unregister_extractor


@pytest.fixture
def pixel_extractor():
    """Features = the 12 channel-wise mean pixel values of a 2x2 average pooling (a known linear map)."""

    def fn(x, wanted):
        f = torch.nn.functional.avg_pool2d(x.float() / 255.0, x.shape[-1] // 2).flatten(1)
        return {"f": f}

    register_extractor("test-pixels", lambda: FeatureExtractor("test-pixels", fn, {"f": 12}), overwrite=True)
    yield "test-pixels"
    unregister_extractor("test-pixels")


def _npz(path, images):
    np.savez(path, images=images)
    return str(path)


def test_ref_then_eval_fid_matches_direct_computation(tmp_path, pixel_extractor, capsys):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(300, 8, 8, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) + 40, 0, 255).astype(np.uint8)
    ref = tmp_path / "ref.npz"
    assert main(["ref", "--data", _npz(tmp_path / "real.npz", real), "--out", str(ref), "--features",
                 pixel_extractor, "--no-progress", "--keep-features"]) == 0
    out_json = tmp_path / "m.json"
    assert main(["eval", "--images", _npz(tmp_path / "fake.npz", fake), "--ref", str(ref), "--metrics", "fid,pr",
                 "--features", pixel_extractor, "--no-progress", "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert "fid" in table and "test-pixels" in table
    res = json.loads(out_json.read_text())

    # the same FID from first principles: Frechet distance of Gaussians fitted to the 12-d features
    def feats(a):
        t = torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255.0
        return torch.nn.functional.avg_pool2d(t, 4).flatten(1).numpy()
    from scipy import linalg
    fr, ff = feats(real), feats(fake)
    mu1, mu2 = fr.mean(0), ff.mean(0)
    s1, s2 = np.cov(fr, rowvar=False), np.cov(ff, rowvar=False)
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert res["fid"]["value"] == pytest.approx(want, rel=1e-6)
    assert res["fid"]["n"] == 300 and res["fid"]["extractor"] == pixel_extractor


def test_eval_errors(tmp_path, pixel_extractor, capsys):
    assert main(["eval", "--images", str(tmp_path / "missing"), "--ref", "x.npz"]) == 2
    assert "does not exist" in capsys.readouterr().err
    imgs = _npz(tmp_path / "a.npz", np.zeros((10, 8, 8, 3), np.uint8))
    assert main(["eval", "--images", imgs, "--metrics", "fid", "--features", pixel_extractor, "--no-progress"]) == 2
    assert "need a reference" in capsys.readouterr().err
    assert main(["eval", "--images", imgs, "--ref", imgs, "--features", "nope"]) == 2
    assert "unknown feature extractor" in capsys.readouterr().err


def test_missing_inception_weights_message_through_entry_point(tmp_path):
    imgs = _npz(tmp_path / "a.npz", np.zeros((4, 8, 8, 3), np.uint8))
    env_dir = tmp_path / "weights"
    env_dir.mkdir()
    import os
    env = {**os.environ, "SKIPTUNE_WEIGHTS": str(env_dir), "TORCH_HOME": str(tmp_path / "th")}
    out = subprocess.run([sys.executable, "-m", "skiptune", "eval", "--images", imgs, "--metrics", "is",
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert "weights-inception-2015-12-05-6726825d.pth" in out.stderr and "SKIPTUNE_WEIGHTS" in out.stderr


def test_ref_in_edm_layout_gives_the_fid_of_the_default_layout(tmp_path, pixel_extractor, capsys):
    rng = np.random.default_rng(3)
    real = _npz(tmp_path / "real.npz", rng.integers(0, 256, size=(200, 8, 8, 3), dtype=np.uint8))
    fake = _npz(tmp_path / "fake.npz", rng.integers(20, 256, size=(150, 8, 8, 3), dtype=np.uint8))
    values = {}
    for layout in ("skiptune", "edm"):
        ref, out = tmp_path / f"{layout}.npz", tmp_path / f"{layout}.json"
        assert main(["ref", "--data", real, "--out", str(ref), "--features", pixel_extractor, "--format", layout,
                     "--no-progress"]) == 0
        assert main(["eval", "--images", fake, "--ref", str(ref), "--no-progress", "--json", str(out)]) == 0
        values[layout] = json.loads(out.read_text())["fid"]  # --features from what the file records
    assert set(np.load(tmp_path / "edm.npz").files) == {"mu", "sigma", "meta"}
    assert values["edm"]["value"] == pytest.approx(values["skiptune"]["value"], rel=1e-9)
    assert values["edm"]["n_ref"] == values["skiptune"]["n_ref"] == 200
    assert values["edm"]["extractor"] == pixel_extractor
    capsys.readouterr()
