"""``skiptune analyze sweep`` (Fig. 4 from the store) and ``skiptune analyze grid`` (Fig. 5) through the CLI."""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import t as student_t

from analysis_tiny import common_args, run_cli, tiny_assets, unit_rows
from skiptune import load_model
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.grid import GridConfig, run_grid
from skiptune.analysis.scoring import FidSetup, fid_estimates
from skiptune.analysis.sweep import SweepConfig, run_sweep
from skiptune.cli import main
from skiptune.cli.analyses import grid as grid_cli
from skiptune.cli.analyses import sweep as sweep_cli
from skiptune.core.errors import InputError
from skiptune.experiment.generate import SamplingSpec, generate, to_uint8
from skiptune.io.images import make_grid
from skiptune.store import Metric, Store

pytestmark = pytest.mark.usefixtures("one_thread")


def _t(values):
    m = float(np.mean(values))
    half = student_t.ppf(0.975, len(values) - 1) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return m, m - half, m + half


def _default_args(add_arguments) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args([])


def test_sweep_reads_the_store_and_averages_over_seed_sets(tmp_path, tmp_path_factory, capsys):
    tiny = tiny_assets(tmp_path_factory)
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    ctx = AnalysisContext(model=str(tiny["model"]), data=str(tiny["data"]), db=None, progress=False)
    fp = ctx.fingerprint
    setup = FidSetup(ctx.scorer, ctx.model_ref, seeds="0-5", seed_sets=3)
    with Store(db) as store:
        # real sweep runs: two rules on a rho axis and a ramp (not on the axis), 3 seed sets each
        fid_estimates(ctx.net, setup, sampler="euler", nfe=3, rules=["none", "const:0.8", "ramp:down:0.8"],
                      store=store)
        # a run of another model, one of another feature network and one made by another revision of
        # the sampler (an untouched FID far below the others, so counting it would move the numbers)
        for other in ({"model": "0" * 64}, {"features": "inception-v3"}, {"sampler_rev": 99, "seeds": "100-105"}):
            cfg = {**store.runs({"rule": "none"})[0].config, **other}
            store.complete_run(cfg, {"fid": Metric(1.0, n_samples=6)})
        runs = [r for r in store.runs({"model": fp, "features": "digits-classifier"}, status="complete")
                if "sampler_rev" not in r.config]
    fid = {}
    for r in runs:
        fid.setdefault(r.config["rule"], {})[r.config["seeds"]] = r.metrics["fid"].value
    res = run_cli("analyze", "sweep", *common_args(tiny, db, out))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(out / "sweep.csv", newline="")))
    assert [(r["sampler"], r["nfe"], r["rule"], r["rho"]) for r in rows] == [
        ("euler", "3", "const:0.8", "0.8"), ("euler", "3", "none", "1.0")]
    for r in rows:
        vals = list(fid[r["rule"]].values())
        m, lo, hi = _t(vals)
        assert float(r["fid"]) == pytest.approx(m, rel=1e-12)
        assert (float(r["fid_ci_low"]), float(r["fid_ci_high"])) == pytest.approx((lo, hi), rel=1e-9)
        d = [fid[r["rule"]][s] - fid["none"][s] for s in fid["none"]]
        assert float(r["diff"]) == pytest.approx(float(np.mean(d)), abs=1e-9)
        assert int(r["seed_sets"]) == 3 and int(r["n_samples"]) == 6
    assert (out / "sweep.png").stat().st_size > 1000
    summary = json.loads((out / "sweep.json").read_text())["summary"]
    best = min(rows, key=lambda r: float(r["fid"]))["rule"]
    assert summary["best[euler, NFE 3]"].startswith(best) and summary["runs_read"] == 6
    # the library with its default config reads the same runs as the command line
    with Store(db) as store:
        lib = run_sweep(ctx.net, store=store)
        assert run_sweep(None, SweepConfig(model_id=fp), store=store).rows == lib.rows
    stored = json.loads((out / "sweep.json").read_text())
    assert lib.config == stored["config"] and lib.summary == stored["summary"]
    assert [(r["rule"], r["fid"], r["diff"]) for r in lib.rows] == [
        (r["rule"], pytest.approx(float(r["fid"]), rel=1e-12), pytest.approx(float(r["diff"]), abs=1e-9)) for r in rows]
    with pytest.raises(InputError, match="results store"):
        run_sweep(ctx.net)
    # --all-rules also tabulates the ramp (rho empty: it is not on the rho axis)
    assert main(["analyze", "sweep", *common_args(tiny, db, out), "--all-rules"]) == 0
    rows = list(csv.DictReader(open(out / "sweep.csv", newline="")))
    assert [r["rule"] for r in rows][-1] == "ramp:down:0.8" and rows[-1]["rho"] == ""
    capsys.readouterr()
    assert main(["analyze", "sweep", *common_args(tiny, db, out), "--samplers", "heun"]) == 2
    assert "no complete sweep runs" in capsys.readouterr().err


def test_grid_same_seeds_side_by_side(tmp_path, tmp_path_factory):
    tiny = tiny_assets(tmp_path_factory)
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    args = ["analyze", "grid", *common_args(tiny, db, out), "--samplers", "euler", "--nfe", "3",
            "--rules", "const:0.7", "--seeds", "0-3"]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(out / "grid.csv", newline="")))
    assert [r["rule"] for r in rows] == ["none", "const:0.7"]
    net = load_model(tiny["model"])
    panels = {}
    for r in rows:  # each panel is exactly the samples of these seeds, tiled in one row
        expected = to_uint8(generate(net, "0-3", SamplingSpec("euler", nfe=3), rule=r["rule"]).images)
        panels[r["rule"]] = expected
        png = torch.from_numpy(np.asarray(Image.open(r["file"])).copy())[None]
        assert torch.equal(png, make_grid(expected, ncols=4))
    diff = float((panels["const:0.7"].float() - panels["none"].float()).abs().mean())
    assert float(rows[0]["mean_abs_diff"]) == 0.0 and float(rows[1]["mean_abs_diff"]) == pytest.approx(diff)
    assert diff > 0  # the rule changes the images of this randomly perturbed network
    assert (out / "grid.png").stat().st_size > 1000
    units = unit_rows(db, "grid-panel")
    assert len(units) == 2
    assert main(args) == 0  # a rerun reads both panels from the store
    assert unit_rows(db, "grid-panel") == units
    # the library with the same settings reads the same panels (the unit configs are the command line's)
    with Store(db) as store:
        lib = run_grid(net, tmp_path / "lib", GridConfig(samplers=["euler"], nfes=[3], rules="const:0.7", seeds="0-3"),
                       store=store)
    assert unit_rows(db, "grid-panel") == units
    assert lib.config == json.loads((out / "grid.json").read_text())["config"]
    assert [(r["rule"], r["mean_abs_diff"]) for r in lib.rows] == [
        (r["rule"], pytest.approx(float(r["mean_abs_diff"]), rel=1e-12)) for r in rows]


def test_sweep_config_refuses_bad_settings_and_has_the_cli_defaults():
    with pytest.raises(InputError, match=r"SweepConfig\.nfes must hold integers >= 1"):
        SweepConfig(nfes=(9, 0))
    with pytest.raises(InputError, match=r"SweepConfig\.samplers must be a sequence of sampler names"):
        SweepConfig(samplers="heun")
    with pytest.raises(InputError, match=r"SweepConfig\.model_id"):
        SweepConfig(model_id="")
    assert SweepConfig(samplers=["heun"], nfes=[9.0]) == SweepConfig(samplers=("heun",), nfes=(9,))
    assert SweepConfig(samplers=None, nfes=None) == SweepConfig()
    assert sweep_cli.config_from_args(_default_args(sweep_cli.add_arguments), AnalysisContext()) == SweepConfig()


def test_grid_config_refuses_bad_settings_and_has_the_cli_defaults():
    with pytest.raises(InputError, match=r"GridConfig\.ncols must be an integer >= 1, got 0"):
        GridConfig(ncols=0)
    with pytest.raises(InputError, match=r"GridConfig\.nfes: sampler 'heun' cannot use exactly 4 NFE"):
        GridConfig(nfes=(4,))
    with pytest.raises(InputError, match=r"GridConfig\.samplers: unknown sampler 'hune'"):
        GridConfig(samplers=("hune",))
    with pytest.raises(InputError, match=r"GridConfig\.rules"):
        GridConfig(rules=("const:abc",))
    with pytest.raises(InputError, match=r"GridConfig\.seeds"):
        GridConfig(seeds="")
    with pytest.raises(InputError, match=r"GridConfig\.mode: unknown mode 'sum'"):
        GridConfig(mode="sum")
    # rules in canonical form, the untouched network first
    assert GridConfig(rules="layer:0.7;none").rules == ("none", "layer:0.7:1")
    assert grid_cli.config_from_args(_default_args(grid_cli.add_arguments), AnalysisContext()) == GridConfig()
