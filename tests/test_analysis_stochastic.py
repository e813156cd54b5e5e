"""``skiptune analyze stochastic``: EDM's churn strength, its saturation, and S_churn = 0 being Heun."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math

import pytest

from analysis_tiny import common_args, run_rows, tiny_assets
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.scoring import FidSetup, fid_estimates
from skiptune.analysis.stochastic import StochasticConfig, check_churns, churn_gamma, run_stochastic
from skiptune.cli import main
from skiptune.cli.analyses import stochastic as stochastic_cli
from skiptune.core.errors import InputError, UsageError
from skiptune.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


def test_churn_gamma_and_validation():
    assert churn_gamma(0, 10) == 0 and churn_gamma(2, 10) == pytest.approx(0.2)
    assert churn_gamma(40, 10) == pytest.approx(math.sqrt(2) - 1)  # saturated
    assert check_churns([0, 1, 2], 5) == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="same gamma"):
        check_churns([10, 40], 10)  # both saturate on 10 steps
    with pytest.raises(ValueError, match="finite and >= 0"):
        check_churns([-1], 10)
    with pytest.raises(ValueError, match="at least one"):
        check_churns([], 10)


@pytest.mark.parametrize("kwargs,message", [
    ({"churns": ()}, "at least one S_churn"),
    ({"churns": (0, -1)}, "S_churn must be finite and >= 0"),
    ({"churns": (float("inf"),)}, "S_churn must be finite and >= 0"),
    ({"churns": (0, 1, 1)}, "S_churn 1 given more than once"),
    ({"churns": "0,1"}, "churns must be a sequence of S_churn numbers"),
    ({"rules": ()}, "rules: give at least one rule"),
    ({"rules": ("const:0.8", "bogus:1")}, "cannot read rule 'bogus:1'"),
    ({"s_tmin": -1.0}, r"s_tmin \(EDM S_tmin\) must be a finite number >= 0"),
    ({"s_noise": float("nan")}, r"s_noise \(EDM S_noise\) must be a finite number >= 0"),
    ({"nfe": 0}, "nfe must be an integer >= 1"),
    ({"nfe": 4}, "cannot use exactly 4 NFE"),
])
def test_stochastic_config_refuses_invalid_settings_on_construction(kwargs, message):
    with pytest.raises(InputError, match=message):
        StochasticConfig(**kwargs)


def test_stochastic_config_is_frozen_normalised_and_matches_the_cli_defaults():
    cfg = StochasticConfig(nfe=3, churns=[0, 2], rules="const:0.8; layer:0.7", s_noise=1)
    assert cfg.churns == (0.0, 2.0) and cfg.rules == ("const:0.8", "layer:0.7")
    assert cfg.measured_rules == ["none", "const:0.8", "layer:0.7:1"] and cfg.options == {"S_noise": 1.0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.nfe = 5
    p = argparse.ArgumentParser()
    stochastic_cli.add_arguments(p)
    assert stochastic_cli.config_from_args(p.parse_args([])) == StochasticConfig()
    with pytest.raises(UsageError, match="--churn must be comma-separated numbers"):
        stochastic_cli.config_from_args(p.parse_args(["--churn", "0,x"]))
    with pytest.raises(UsageError, match="--rules must be ';'-separated rules"):
        stochastic_cli.config_from_args(p.parse_args(["--rules", " ; "]))


def test_stochastic_cli_end_to_end(tmp_path, tmp_path_factory, capsys):
    tiny = tiny_assets(tmp_path_factory)
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    args = ["analyze", "stochastic", *common_args(tiny, db, out), "--nfe", "3", "--churn", "0,0.5",
            "--rules", "const:0.8", "--seeds", "0-5", "--seed-sets", "2"]
    assert main(args) == 0  # in-process entry point (the subprocess path is covered by the other analyses)
    runs = run_rows(db)
    assert len(runs) == 2 * 2 * 2  # S_churn x (untouched, const:0.8) x seed sets
    rows = list(csv.DictReader(open(out / "stochastic.csv", newline="")))
    expected = [(c, r) for c in (0.0, 0.5) for r in ("none", "const:0.8")]
    assert [(float(r["S_churn"]), r["rule"]) for r in rows] == expected
    steps = 2  # EDM Alg. 2 at NFE 3: 2 steps (2 N - 1 evaluations)
    assert [float(r["gamma"]) for r in rows] == [min(float(r["S_churn"]) / steps, math.sqrt(2) - 1) for r in rows]
    assert [float(r["rho"]) for r in rows] == [1.0, 0.8, 1.0, 0.8]
    assert (out / "stochastic.png").stat().st_size > 1000
    # S_churn = 0 is the deterministic Heun sampler: the same FIDs, bit for bit, from separate Heun runs
    ctx = AnalysisContext(model=str(tiny["model"]), data=str(tiny["data"]), db=None, progress=False)
    setup = FidSetup(ctx.scorer, ctx.model_ref, seeds="0-5", seed_sets=2)
    with Store(db) as store:
        heun = fid_estimates(ctx.net, setup, sampler="heun", nfe=3, rules=["none", "const:0.8"], store=store)
    for r in rows[:2]:
        assert heun[r["rule"]].mean == float(r["fid"])
    # the library call with the same settings reads every run from the store and gives the same table
    config = StochasticConfig(nfe=3, churns=(0, 0.5), rules=("const:0.8",))
    with Store(db) as store:
        lib = run_stochastic(ctx.net, setup, config, store=store)
    assert [(r["S_churn"], r["rule"], r["fid"]) for r in lib.rows] == [
        (float(r["S_churn"]), r["rule"], float(r["fid"])) for r in rows]
    with pytest.raises(InputError, match="same gamma"):  # saturation on the grid is checked before any sampling
        run_stochastic(ctx.net, setup, StochasticConfig(nfe=3, churns=(5, 9)))
    runs = run_rows(db)
    assert main(args) == 0  # rerun: nothing recomputed
    assert run_rows(db) == runs
    capsys.readouterr()
    assert main([*args, "--churn", "5,9"]) == 2  # both saturate on 2 steps
    assert "same gamma" in capsys.readouterr().err
