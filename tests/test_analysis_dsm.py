"""``dsm``: Haar transform, score-matching losses of denoisers with known outputs (seed 003, Tables 8, 9, 14), CLI."""

import json

import pytest
import torch
from torch import nn

from analysis_nets import JoinNet, tiny_net, toy_adapter
from skiptune.analysis.denoising import edm_lognormal_sigmas, seeded_noise
from skiptune.analysis.dsm import DsmConfig, haar2d, ihaar2d, run_dsm
from skiptune.cli import main
from skiptune.core.stats import t_interval
from skiptune.experiment.results import units
from skiptune.io import load_model, save_checkpoint
from skiptune.metrics import wrap_module
from skiptune.store import Store
from skiptune.train.data import load_dataset
from skiptune.train.loss import edm_weight


def _images(n, res=4, seed=1):
    return torch.rand((n, 1, res, res), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_haar_reconstructs_preserves_energy_and_names_orientations():
    x = torch.randn((2, 3, 6, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bands = haar2d(x)
    assert all(b.shape == (2, 3, 3, 4) for b in bands.values())
    assert torch.allclose(ihaar2d(bands), x, atol=1e-12)  # perfect reconstruction
    energy = sum(float((b**2).sum()) for b in bands.values())
    assert energy == pytest.approx(float((x**2).sum()), rel=1e-12)  # orthonormal: Parseval
    block = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])  # top row bright: a horizontal edge
    got = {k: float(v) for k, v in haar2d(block).items()}
    assert got == {"LL": 1.0, "LH": 1.0, "HL": 0.0, "HH": 0.0}
    got = {k: float(v) for k, v in haar2d(block.transpose(-1, -2)).items()}  # left column bright: vertical edge
    assert got == {"LL": 1.0, "LH": 0.0, "HL": 1.0, "HH": 0.0}
    with pytest.raises(ValueError, match="even"):
        haar2d(torch.zeros((1, 1, 3, 4)))


class ZeroJoins(JoinNet):
    """D = 0, with two skip sites (unused for the output) so that rules attach."""

    def forward(self, x, sigma, class_labels=None):
        return 0 * super().forward(x, sigma, class_labels)


def test_losses_of_the_zero_denoiser_are_the_data_moments(one_thread):
    # D = 0: pixel loss of image j is mean(y_j^2) at any sigma; feature loss of a linear f (no bias) is mean((W y_j)^2)
    w = torch.randn((5, 3 * 16), generator=torch.Generator().manual_seed(2))
    lin = nn.Sequential(nn.Flatten(), nn.Linear(48, 5, bias=False))
    lin[1].weight.data = w
    ext = wrap_module(lin, "linear", input_range=(-1.0, 1.0))
    y = _images(6)
    with toy_adapter():
        res = run_dsm(ZeroJoins(), y, DsmConfig(rules="none;const:0.5", sigmas="0.1,10"),
                      extractors={"feature:lin": (ext, "features")})
    m2 = (y**2).flatten(1).mean(1).double()
    f2 = ((y.expand(-1, 3, -1, -1).flatten(1) @ w.T) ** 2).mean(1).double()
    rows = {(r["space"], r["sigma"], r["rule"]): r for r in res.rows}
    for s in (0.1, 10.0):
        assert rows[("pixel", s, "none")]["loss"] == pytest.approx(float(m2.mean()), rel=1e-6)
        assert rows[("feature:lin", s, "none")]["loss"] == pytest.approx(float(f2.mean()), rel=1e-5)
        bands = sum(rows[(b, s, "none")]["loss"] for b in ("LL", "LH", "HL", "HH")) / 4
        assert bands == pytest.approx(rows[("pixel", s, "none")]["loss"], rel=1e-9)  # Parseval, per-band means
    sig = edm_lognormal_sigmas(6, torch.Generator().manual_seed(res.config["lognormal_seed"]))
    weighted = float((edm_weight(sig, 0.5) * m2).mean())
    assert rows[("pixel", "lognormal", "none")]["loss"] == pytest.approx(weighted, rel=1e-6)
    # the paper's normalisations: lambda(sigma) = 1/sigma^2 + 1/0.25 at a fixed sigma (Table 9's weighting), and
    # squared norms summed over the 1 x 4 x 4 = 16 pixels, 4 coefficients per Haar band, 5 features
    for s in (0.1, 10.0):
        lam = 1 / s**2 + 4.0
        pix = rows[("pixel", s, "none")]
        assert (pix["dims"], rows[("LL", s, "none")]["dims"], rows[("feature:lin", s, "none")]["dims"]) == (16, 4, 5)
        assert pix["loss_weighted"] == pytest.approx(lam * float(m2.mean()), rel=1e-6)
        assert pix["loss_sum"] == pytest.approx(16 * lam * float(m2.mean()), rel=1e-6)
        assert rows[("feature:lin", s, "none")]["loss_sum"] == pytest.approx(5 * lam * float(f2.mean()), rel=1e-5)
        tuned = rows[("pixel", s, "const:0.5")]
        assert tuned["rel_diff"] == pytest.approx(0.0, abs=1e-12)  # D = 0 whatever rho: no change in any units
    f_agg = float((edm_weight(sig, 0.5) * f2).mean())
    assert rows[("feature:lin", "lognormal", "none")]["loss_weighted"] == pytest.approx(f_agg, rel=1e-5)
    assert res.summary["feature:lin / pixel, aggregate, means"] == pytest.approx(f_agg / weighted, rel=1e-5)
    assert res.summary["feature:lin / pixel, aggregate, sums"] == pytest.approx(5 * f_agg / (16 * weighted), rel=1e-5)


def test_paired_losses_of_a_linear_denoiser_match_hand_computation(one_thread):
    # JoinNet(2, 3, 1, scale 6) outputs (2 + 3 rho_0 + rho_1) x / 6: the identity at rho = 1, (2/3) x at rho = 0.5
    y, seed = _images(8), 5
    with toy_adapter():
        res = run_dsm(JoinNet(2.0, 3.0, 1.0, 6.0), y,
                      DsmConfig(rules="none;const:0.5", sigmas="0.3,3", lognormal=False, seed=seed))
    n = seeded_noise(seed, 8, (1, 4, 4))
    rows = {(r["space"], r["sigma"], r["rule"]): r for r in res.rows}
    for s in (0.3, 3.0):
        x = y + s * n
        base = ((x - y) ** 2).flatten(1).mean(1).double()
        tuned = ((2 / 3 * x - y) ** 2).flatten(1).mean(1).double()
        assert rows[("pixel", s, "none")]["loss"] == pytest.approx(float(base.mean()), rel=1e-5)
        r = rows[("pixel", s, "const:0.5")]
        assert r["loss"] == pytest.approx(float(tuned.mean()), rel=1e-5)
        diff = t_interval((tuned - base).tolist())
        assert (r["diff"], r["diff_ci_low"], r["diff_ci_high"]) == pytest.approx(
            (diff.mean, diff.ci_low, diff.ci_high), rel=1e-4)
        assert r["rel_diff"] == pytest.approx(diff.mean / float(base.mean()), rel=1e-4)


def test_errors(one_thread):
    net = tiny_net()
    with pytest.raises(ValueError, match="sites rule has 1 values"):
        run_dsm(net, _images(4, res=8), DsmConfig(rules="none;sites:0.5"))
    with pytest.raises(ValueError, match="at least 2 images"):
        run_dsm(net, _images(1, res=8), DsmConfig())


def test_config_is_canonical_and_refuses_bad_settings_on_construction():
    from skiptune.core.errors import InputError

    cfg = DsmConfig()
    assert cfg.rules == ("none", "const:0.7") and len(cfg.sigmas) == 5 and cfg.sigmas[0] == 80.0
    assert (cfg.lognormal, cfg.seed, cfg.batch, cfg.lognormal_seed) == (True, 0, 100, 2_000_000)
    assert DsmConfig(rules=["none", "const:0.70", "const:0.7"]).rules == ("none", "const:0.7")  # deduplicated
    with pytest.raises(InputError, match="give a baseline rule and at least one rule to compare"):
        DsmConfig(rules="none")
    with pytest.raises(InputError, match="cannot read rule 'bogus'"):
        DsmConfig(rules="none;bogus")
    with pytest.raises(InputError, match="lognormal must be True or False"):
        DsmConfig(lognormal="no")
    with pytest.raises(InputError, match=r"batch must be an integer >= 1 \(images per forward pass\), got 0"):
        DsmConfig(batch=0)
    with pytest.raises(InputError, match="sigmas must be a spec"):
        DsmConfig(sigmas=["a"])


def test_cli_end_to_end_matches_library_and_resumes_from_store(tmp_path, one_thread):
    from skiptune.metrics import get_extractor

    model = save_checkpoint(tiny_net(), tmp_path / "tiny.safetensors")
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    args = ["analyze", "dsm", "--model", str(model), "--n", "6", "--rules", "none;const:0.7", "--sigmas", "0.5,5",
            "--db", str(db), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"dsm.{ext}").stat().st_size > 0
    got = json.loads((out / "dsm.json").read_text())
    lib = run_dsm(load_model(str(model)), load_dataset("digits", "test", resolution=8).images[:6],
                  DsmConfig(rules="none;const:0.7", sigmas="0.5,5"), extractors=[get_extractor("digits-classifier")])
    assert len(got["rows"]) == len(lib.rows) == 6 * 3 * 2  # (pixel, 4 bands, 1 feature net) x 3 sigmas x 2 rules
    for row, ref in zip(got["rows"], lib.rows, strict=True):
        assert (row["space"], row["rule"]) == (ref["space"], ref["rule"])
        assert row["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    with Store(db) as store:  # tamper with one stored unit: the rerun must read it back
        stored = units(store, "dsm")
        assert len(stored) == 2 * 3
        value = stored[0].result
        value["pixel"] = [123.0] * 6
        store.complete_run(stored[0].config, {}, result=value, overwrite=True)
    assert main(args) == 0
    rows = json.loads((out / "dsm.json").read_text())["rows"]
    assert sum(r["loss"] == pytest.approx(123.0) for r in rows) == 1
    order = [(r["space"], r["sigma"], r["rule"]) for r in rows]  # same table layout when read from the store
    assert order == [(r["space"], r["sigma"], r["rule"]) for r in got["rows"]]


def test_float_features_equal_the_metric_path_on_quantised_images_and_carry_gradients(one_thread):
    from skiptune.experiment.generate import to_uint8
    from skiptune.metrics import get_extractor

    ext = get_extractor("digits-classifier")
    u = torch.randint(0, 256, (3, 1, 16, 16), generator=torch.Generator().manual_seed(0)).float()
    x = (u / 127.5 - 1).requires_grad_(True)  # to_uint8 maps these exactly back to u
    got = ext.float_features(x, features=["features"])["features"]
    ref = ext(to_uint8(x.detach()), features=["features"])["features"]
    assert torch.allclose(got.detach(), ref, atol=1e-4)
    got.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
