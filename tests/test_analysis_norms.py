"""``norms``: prop_i = ||d_i|| / ||u_i|| (seed 003, Fig. 2) against hand computations, and through the CLI."""

import json

import pytest
import torch

from analysis_nets import JoinNet, tiny_net, toy_adapter
from skiptune.analysis import stored_results
from skiptune.analysis.norms import NormsConfig, run_norms
from skiptune.cli import main
from skiptune.experiment.results import units
from skiptune.io import load_model, save_checkpoint
from skiptune.store import Store
from skiptune.train.data import load_dataset


def _images(n, res=4, seed=0):
    return torch.rand((n, 1, res, res), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_ratio_of_hand_built_joins_and_under_a_rule(one_thread):
    a0, b0, b1 = 2.0, 3.0, -1.0
    with toy_adapter():
        net = JoinNet(a0, b0, b1)
        res = run_norms(net, _images(5), NormsConfig(sigmas="0.5,3"))
        avg = {r["site"]: r for r in res.rows if r["sigma"] == "mean"}
        # every sample: ||d0|| / ||u0|| = |b0 / a0|, ||d1|| / ||u1|| = |b1 / (a0 + b0)|
        assert avg[0]["prop"] == pytest.approx(1.5, rel=1e-6)
        assert avg[1]["prop"] == pytest.approx(0.2, rel=1e-6)
        assert res.summary["mean_prop"] == pytest.approx((1.5 + 0.2) / 2, rel=1e-6)
        assert all(r["prop"] == pytest.approx(1.5 if r["site"] == 0 else 0.2, rel=1e-6) for r in res.rows)
        assert len([r for r in res.rows if r["sigma"] != "mean"]) == 2 * 2  # per-sigma curves
        # with rho = 0.5 at both sites: d0 -> 1.5 x, u1 = (2 + 1.5) x, d1 -> -0.5 x
        tuned = run_norms(net, _images(5), NormsConfig(sigmas="1", rule="const:0.5"))
        props = {r["site"]: r["prop"] for r in tuned.rows if r["sigma"] == "mean"}
        assert props[0] == pytest.approx(0.75, rel=1e-6)
        assert props[1] == pytest.approx(0.5 / 3.5, rel=1e-6)


def test_innermost_site_scales_exactly_with_rho(one_thread):
    # u_0 is computed before any join, so a rule changes only d_0 there: prop_0(rho) = rho prop_0(1)
    net = tiny_net()
    x = _images(4, res=8)
    base = run_norms(net, x, NormsConfig(sigmas="0.3,2"))
    half = run_norms(net, x, NormsConfig(sigmas="0.3,2", rule="const:0.5"))
    b = {(r["site"], r["sigma"]): r["prop"] for r in base.rows}
    h = {(r["site"], r["sigma"]): r["prop"] for r in half.rows}
    assert h[(0, 0.3)] == pytest.approx(0.5 * b[(0, 0.3)], rel=1e-6)
    assert h[(0, "mean")] == pytest.approx(0.5 * b[(0, "mean")], rel=1e-6)
    assert h[(3, 0.3)] != pytest.approx(0.5 * b[(3, 0.3)], rel=1e-3)  # outer sites see changed u as well


def test_bad_input_is_rejected(one_thread):
    net = tiny_net()
    with pytest.raises(ValueError, match="no images"):
        run_norms(net, torch.zeros((0, 1, 8, 8)), NormsConfig())
    with pytest.raises(ValueError, match="at least 2 images"):
        run_norms(net, _images(1, res=8), NormsConfig())
    with pytest.raises(ValueError, match="8x8"):
        run_norms(net, _images(3, res=4), NormsConfig())
    with pytest.raises(ValueError, match="sites rule has 2 values"):
        run_norms(net, _images(3, res=8), NormsConfig(rule="sites:0.5,0.6"))


def test_config_is_canonical_and_refuses_bad_settings_on_construction():
    from skiptune.core.errors import InputError

    cfg = NormsConfig(sigmas=[3, 0.5], rule="const:0.50")
    assert (cfg.sigmas, cfg.seed, cfg.rule, cfg.batch) == ((3.0, 0.5), 0, "const:0.5", 64)
    assert NormsConfig().sigmas == NormsConfig(sigmas="edm:10").sigmas and len(NormsConfig().sigmas) == 10
    with pytest.raises(InputError, match="cannot read noise levels 'edm:x'"):
        NormsConfig(sigmas="edm:x")
    with pytest.raises(InputError, match="noise levels must be finite and > 0"):
        NormsConfig(sigmas=[1.0, -2.0])
    with pytest.raises(InputError, match="rule 'const:x': a value is not a number"):
        NormsConfig(rule="const:x")
    with pytest.raises(InputError, match=r"batch must be an integer >= 1 \(images per forward pass\), got 0"):
        NormsConfig(batch=0)
    with pytest.raises(InputError, match="seed must be an integer >= 0"):
        NormsConfig(seed=-1)
    with pytest.raises(AttributeError):
        cfg.batch = 8  # frozen


def test_cli_end_to_end_matches_library_and_resumes_from_store(tmp_path, capsys, one_thread):
    model = save_checkpoint(tiny_net(), tmp_path / "tiny.safetensors")
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    args = ["analyze", "norms", "--model", str(model), "--n", "4", "--sigmas", "0.5,5", "--db", str(db),
            "--out", str(out), "--no-progress"]
    assert main(args) == 0  # the function behind `python -m skiptune`, in-process (no interpreter start-up)
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"norms.{ext}").stat().st_size > 0
    got = json.loads((out / "norms.json").read_text())
    images = load_dataset("digits", "test", resolution=8).images[:4]
    lib = run_norms(load_model(str(model)), images, NormsConfig(sigmas="0.5,5"))
    assert got["summary"]["mean_prop"] == pytest.approx(lib.summary["mean_prop"], rel=1e-6)
    assert "mean_prop" in capsys.readouterr().out
    # a rerun reads every unit from the store: overwrite one stored unit and see it come back
    with Store(db) as store:
        stored = units(store, "norms")
        assert len(stored) == 2
        tampered, other = stored[0].result, stored[1].result
        tampered["prop"][0] = [7.0] * 4
        store.complete_run(stored[0].config, {}, result=tampered, overwrite=True)
    assert main(args) == 0
    rows = json.loads((out / "norms.json").read_text())["rows"]
    site0 = next(r for r in rows if r["site"] == 0 and r["sigma"] == "mean")
    assert site0["prop"] == pytest.approx((7.0 + sum(other["prop"][0]) / 4) / 2, rel=1e-6)
    with Store(db) as store:
        assert len(units(store, "norms")) == 2 and len(stored_results(store, "norms")) == 1
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "report")]) == 0  # redrawn from the store alone
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## norms" in text and "mean_prop" in text and ".png" in text
