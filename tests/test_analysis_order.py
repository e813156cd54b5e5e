"""``skiptune analyze order``: the ramps of seed 003 Table 10 and the analysis through the CLI."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math

import pytest

from analysis_tiny import common_args, run_rows, tiny_assets
from skiptune.analysis.order import OrderConfig, mean_rho, order_rules
from skiptune.cli import main
from skiptune.cli.analyses import order as order_cli
from skiptune.core.errors import InputError, UsageError
from skiptune.skip import as_rule

pytestmark = pytest.mark.usefixtures("one_thread")
LO, HI = 0.002, 80.0


@pytest.mark.parametrize("rho0", [0.78, 0.5, 1.3])
def test_ramps_follow_the_paper(rho0):
    """Increasing: rho_0 at sigma_min -> 1 at sigma_max; decreasing: 1 -> rho_0; linear in sigma (EDM time),
    so the midpoint of the range gets (1 + rho_0) / 2; the log variant reaches it at the geometric mean."""
    rules = order_rules(rho0)
    up, down, const = (as_rule(rules[k]).with_sigma_range(LO, HI) for k in ("increasing", "decreasing", "constant"))
    mid, gmid = (LO + HI) / 2, math.sqrt(LO * HI)
    assert float(up.factor(0, 4, LO)) == pytest.approx(rho0) and float(up.factor(3, 4, HI)) == pytest.approx(1.0)
    assert float(down.factor(0, 4, LO)) == pytest.approx(1.0) and float(down.factor(3, 4, HI)) == pytest.approx(rho0)
    assert float(up.factor(1, 4, mid)) == pytest.approx((1 + rho0) / 2)
    assert float(down.factor(1, 4, mid)) == pytest.approx((1 + rho0) / 2)
    assert all(float(const.factor(i, 4, s)) == rho0 for i in range(4) for s in (LO, mid, HI))
    logup = as_rule(order_rules(rho0, "log")["increasing"]).with_sigma_range(LO, HI)
    assert float(logup.factor(0, 4, gmid)) == pytest.approx((1 + rho0) / 2)
    # mean over the steps' start sigmas of a constant is the constant; of up + down it is 1 + rho_0 pointwise
    grid = [80.0, 20.0, 5.0, 1.0, 0.1, 0.0]
    assert mean_rho(rules["constant"], grid, (LO, HI)) == pytest.approx(rho0)
    total = mean_rho(rules["increasing"], grid, (LO, HI)) + mean_rho(rules["decreasing"], grid, (LO, HI))
    assert total == pytest.approx(1 + rho0)


def test_order_input_errors():
    with pytest.raises(ValueError, match="finite and > 0"):
        order_rules(0.0)
    with pytest.raises(ValueError, match="'sigma' or 'log'"):
        order_rules(0.7, "time")


@pytest.mark.parametrize("kwargs,message", [
    ({"rho0": ()}, "rho0: give at least one rho_0"),
    ({"rho0": (0.7, 0.0)}, "finite and > 0"),
    ({"rho0": (float("nan"),)}, "finite and > 0"),
    ({"rho0": "0.7"}, "rho0 must be a sequence of numbers"),
    ({"rho0": ("x",)}, "rho0 must be a sequence of numbers"),
    ({"space": "time"}, "'sigma' or 'log'"),
    ({"sampler": "nope"}, "unknown sampler 'nope'"),
    ({"nfe": -1}, "nfe must be an integer >= 1"),
    ({"sampler": "heun", "nfe": 4}, "cannot use exactly 4 NFE"),
])
def test_order_config_refuses_invalid_settings_on_construction(kwargs, message):
    with pytest.raises(InputError, match=message):
        OrderConfig(**kwargs)


def test_order_config_is_frozen_normalised_and_matches_the_cli_defaults():
    cfg = OrderConfig(rho0=[0.7, 1], space="log")
    assert cfg.rho0 == (0.7, 1.0)
    assert cfg.rules() == {0.7: order_rules(0.7, "log"), 1.0: order_rules(1.0, "log")}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.space = "sigma"
    p = argparse.ArgumentParser()
    order_cli.add_arguments(p)
    assert order_cli.config_from_args(p.parse_args([])) == OrderConfig()
    with pytest.raises(UsageError, match="--rho0 must be comma-separated numbers"):
        order_cli.config_from_args(p.parse_args(["--rho0", ","]))


def test_order_cli_end_to_end(tmp_path, tmp_path_factory, capsys):
    tiny = tiny_assets(tmp_path_factory)
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    args = ["analyze", "order", *common_args(tiny, db, out), "--sampler", "euler", "--nfe", "3", "--rho0", "0.7,1",
            "--seeds", "0-5", "--seed-sets", "2"]
    assert main(args) == 0  # in-process entry point (the subprocess path is covered by the other analyses)
    runs = run_rows(db)
    # untouched + 3 orders at rho_0 = 0.7, 2 seed sets each; at rho_0 = 1 every order is the untouched point
    assert len(runs) == 4 * 2
    rows = list(csv.DictReader(open(out / "order.csv", newline="")))
    assert [(r["rho0"], r["order"]) for r in rows] == [("1.0", "untouched")] + [
        (r0, o) for r0 in ("0.7", "1.0") for o in ("constant", "increasing", "decreasing")]
    base = float(rows[0]["fid"])
    for r in rows[1:]:
        assert float(r["diff"]) == pytest.approx(float(r["fid"]) - base, abs=1e-9)
        if r["rho0"] == "1.0":  # every ramp at rho_0 = 1 is the untouched network, bit for bit
            assert float(r["fid"]) == base and float(r["diff"]) == 0.0
    ramp = {r["order"]: r for r in rows if r["rho0"] == "0.7"}
    assert float(ramp["increasing"]["rho_at_sigma_min"]) == pytest.approx(0.7)
    assert float(ramp["decreasing"]["rho_at_sigma_max"]) == pytest.approx(0.7)
    assert (out / "order.png").stat().st_size > 1000
    assert main(args) == 0  # a rerun reads every run from the store
    assert run_rows(db) == runs
    fids = [r["fid"] for r in rows]
    assert main([*args, "--no-db"]) == 0  # computed in a temporary store: the same numbers, the store untouched
    assert [r["fid"] for r in csv.DictReader(open(out / "order.csv", newline=""))] == fids
    assert run_rows(db) == runs
    capsys.readouterr()
    assert main([*args, "--rho0", "0"]) == 2
    assert "finite and > 0" in capsys.readouterr().err
    assert main([*args, "--rho0", "x"]) == 2
    assert "--rho0 must be comma-separated numbers" in capsys.readouterr().err
