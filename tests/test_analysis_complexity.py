"""``complexity``: Jacobian norms of the denoiser (seed 003, eq. 3) against a linear denoiser, and through the CLI."""

import json
import math

import pytest
import torch

from analysis_nets import LinearDenoiser, tiny_net
from skiptune.analysis.complexity import ComplexityConfig, jacobian_norms, run_complexity
from skiptune.cli import main
from skiptune.experiment.results import units
from skiptune.io import load_model, save_checkpoint
from skiptune.store import Store
from skiptune.train.data import load_dataset


def _a(seed=0, d=16):
    return torch.randn((d, d), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / 4


def _images(n, res=4):
    return torch.rand((n, 1, res, res), generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_exact_norms_of_a_linear_denoiser(one_thread):
    a = _a()
    net = LinearDenoiser(a)
    res = run_complexity(net, _images(3), ComplexityConfig(rules="none", sigmas="0.5,20", estimator="exact"))
    ones = torch.ones(16, dtype=torch.float64)
    for row in res.rows:  # J = A at every input and sigma
        assert row["frobenius"] == pytest.approx(float(a.norm()), rel=1e-6)
        assert row["spectral"] == pytest.approx(float(torch.linalg.matrix_norm(a, 2)), rel=1e-6)
        assert row["sum_grad"] == pytest.approx(float((a.T @ ones).norm()), rel=1e-6)
        assert row["ratio_to_baseline"] == pytest.approx(1.0)
    assert res.config["estimator"] == "exact" and res.summary["input_dim"] == 16


def test_hutchinson_is_within_its_monte_carlo_error(one_thread):
    a = _a(seed=3)
    net = LinearDenoiser(a)
    m = 600
    est = jacobian_norms(net, _images(1)[0], 1.0, estimator="hutchinson", probes=m, chunk=200,
                         generator=torch.Generator().manual_seed(0))
    # ||A^T v||^2 = v^T M v with M = A A^T; for Rademacher v: mean ||A||_F^2, variance 2 sum_{i != j} M_ij^2
    mm = a @ a.T
    var = 2 * float((mm**2).sum() - (mm.diagonal() ** 2).sum()) / m
    assert abs(est["frobenius"] ** 2 - float(a.norm()) ** 2) < 4 * math.sqrt(var)
    assert math.isnan(est["spectral"])
    assert est["sum_grad"] == pytest.approx(float((a.T @ torch.ones(16, dtype=torch.float64)).norm()), rel=1e-6)


def test_errors(one_thread):
    net = LinearDenoiser(_a())
    with pytest.raises(ValueError, match="at least 2 images"):
        run_complexity(net, _images(1), ComplexityConfig(rules="none"))
    with pytest.raises(ValueError, match="no known skip sites"):
        run_complexity(net, _images(3), ComplexityConfig(rules="const:0.5"))


def test_config_is_canonical_and_refuses_bad_settings_on_construction():
    from skiptune.core.errors import InputError

    cfg = ComplexityConfig()
    assert cfg.rules == ("const:0.6", "const:0.8", "const:1", "const:1.2") and cfg.sigmas == (80.0, 5.0)
    assert (cfg.estimator, cfg.probes, cfg.seed, cfg.chunk) == ("auto", 32, 0, 256)
    assert ComplexityConfig(rules=["none", "layer:0.7"]).rules == ("none", "layer:0.7:1")
    assert cfg.estimator_for(1024) == "exact" and cfg.estimator_for(1025) == "hutchinson"
    with pytest.raises(InputError, match="unknown estimator 'svd'; use one of auto, exact, hutchinson"):
        ComplexityConfig(estimator="svd")
    with pytest.raises(InputError, match=r"probes must be an integer >= 1 \(Rademacher probes per image\), got 0"):
        ComplexityConfig(probes=0)
    with pytest.raises(InputError, match="chunk must be an integer >= 1"):
        ComplexityConfig(chunk=2.5)
    with pytest.raises(InputError, match="no rules given"):
        ComplexityConfig(rules=[])
    with pytest.raises(InputError, match="cannot read noise levels"):
        ComplexityConfig(sigmas="80;5")


def test_cli_end_to_end_matches_library_and_resumes_from_store(tmp_path, one_thread):
    model = save_checkpoint(tiny_net(), tmp_path / "tiny.safetensors")
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    args = ["analyze", "complexity", "--model", str(model), "--n", "2", "--rules", "const:0.5;none", "--sigmas", "2",
            "--db", str(db), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"complexity.{ext}").stat().st_size > 0
    got = json.loads((out / "complexity.json").read_text())
    assert got["config"]["estimator"] == "exact"  # 64 input dims
    lib = run_complexity(load_model(str(model)), load_dataset("digits", "test", resolution=8).images[:2],
                         ComplexityConfig(rules="const:0.5;none", sigmas="2"))
    for row, ref in zip(got["rows"], lib.rows, strict=True):
        assert row["rule"] == ref["rule"] and row["frobenius"] == pytest.approx(ref["frobenius"], rel=1e-5)
    assert got["rows"][1]["ratio_to_baseline"] == pytest.approx(1.0)
    with Store(db) as store:  # tamper with a stored unit: the rerun must read it, not recompute
        stored = units(store, "complexity")
        assert len(stored) == 2
        value = stored[0].result
        value["frobenius"] = [100.0, 100.0]
        store.complete_run(stored[0].config, {}, result=value, overwrite=True)
    assert main(args) == 0
    rows = json.loads((out / "complexity.json").read_text())["rows"]
    assert any(r["frobenius"] == pytest.approx(100.0) for r in rows)
