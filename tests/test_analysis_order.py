"""``skiptune analyze order``: the ramps of seed 003 Table 10 and the analysis through the CLI."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math

import pytest
import torch

from analysis_tiny import common_args, run_rows, tiny_assets
from skiptune.analysis.order import OrderConfig, mean_rho, model_time_axis, order_rules
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


def test_ramp_axes_on_the_edm_grid():
    """Heun NFE 9 on the EDM grid (5 steps from 80 to 0.002): the step ramps take rho_0 + (1 - rho_0) (4 - j)/4 at
    the j-th step, mean (1 + rho_0)/2 for both orders; the sigma ramps' mean is rho_0 + (1 - rho_0) mean(pos) with
    pos = (s - lo)/(hi - lo); the log ramps' with pos = ln(s/lo)/ln(hi/lo); the VP ramps' with the VP time."""
    from skiptune.sampling import make_sigmas

    rho0 = 0.7
    grid = [float(s) for s in make_sigmas("edm", 5, LO, HI)]
    starts = grid[:-1]
    step = order_rules(rho0, "step", grid)
    expected = [rho0 + (1 - rho0) * (4 - j) / 4 for j in range(5)]
    assert [float(as_rule(step["increasing"]).factor(0, 1, s)) for s in starts] == pytest.approx(expected, abs=1e-6)
    assert mean_rho(step["increasing"], grid, (LO, HI)) == pytest.approx((1 + rho0) / 2, abs=1e-6)
    assert mean_rho(step["decreasing"], grid, (LO, HI)) == pytest.approx((1 + rho0) / 2, abs=1e-6)

    def t_vp(s):
        return (math.sqrt(0.01 + 2 * 19.9 * math.log1p(s * s)) - 0.1) / 19.9

    positions = {"sigma": [(s - LO) / (HI - LO) for s in starts],
                 "log": [math.log(s / LO) / math.log(HI / LO) for s in starts],
                 "vp": [(t_vp(s) - t_vp(LO)) / (t_vp(HI) - t_vp(LO)) for s in starts]}
    for axis, pos in positions.items():
        rules = order_rules(rho0, axis)
        up = sum(rho0 + (1 - rho0) * p for p in pos) / len(pos)
        assert mean_rho(rules["increasing"], grid, (LO, HI)) == pytest.approx(up)
        assert mean_rho(rules["decreasing"], grid, (LO, HI)) == pytest.approx(1 + rho0 - up)
    # the sigma ramps stay within 0.1 (1 - rho_0) of their end values at every step below sigma 8
    sig = order_rules(rho0, "sigma")
    assert all(float(as_rule(sig["increasing"]).with_sigma_range(LO, HI).factor(0, 1, s)) < rho0 + 0.1 * (1 - rho0)
               for s in starts if s < 8)


def test_model_time_axis_reads_the_noise_conditioning():
    """EDM (c_noise = ln(sigma)/4) and VE (ln(sigma/2)): log sigma; VP (c_noise = 999 t(sigma)): the VP time."""
    from skiptune.nets.precond import EDMPrecond, VEPrecond, VPPrecond

    kw = dict(model_type="SongUNet", model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[])
    assert model_time_axis(EDMPrecond(8, 1, **kw)) == "log"
    assert model_time_axis(VEPrecond(8, 1, **kw)) == "log"
    assert model_time_axis(VPPrecond(8, 1, **kw)) == "vp"
    with pytest.raises(InputError, match="diffusion time is unknown"):
        model_time_axis(torch.nn.Linear(2, 2))


def test_order_input_errors():
    with pytest.raises(ValueError, match="finite and > 0"):
        order_rules(0.0)
    with pytest.raises(ValueError, match="'sigma', 'log', 'vp' or 'step'"):
        order_rules(0.7, "time")
    with pytest.raises(ValueError, match="needs the sampler's sigma grid"):
        order_rules(0.7, "step")


@pytest.mark.parametrize("kwargs,message", [
    ({"rho0": ()}, "rho0: give at least one rho_0"),
    ({"rho0": (0.7, 0.0)}, "finite and > 0"),
    ({"rho0": (float("nan"),)}, "finite and > 0"),
    ({"rho0": "0.7"}, "rho0 must be a sequence of numbers"),
    ({"rho0": ("x",)}, "rho0 must be a sequence of numbers"),
    ({"axes": ("clock",)}, "unknown ramp axis 'clock'"),
    ({"axes": "sigma"}, "axes must be a non-empty sequence"),
    ({"axes": ()}, "axes must be a non-empty sequence"),
    ({"sampler": "nope"}, "unknown sampler 'nope'"),
    ({"nfe": -1}, "nfe must be an integer >= 1"),
    ({"sampler": "heun", "nfe": 4}, "cannot use exactly 4 NFE"),
])
def test_order_config_refuses_invalid_settings_on_construction(kwargs, message):
    with pytest.raises(InputError, match=message):
        OrderConfig(**kwargs)


def test_order_config_is_frozen_normalised_and_matches_the_cli_defaults():
    cfg = OrderConfig(rho0=[0.7, 1], axes=["log", "step", "log"])
    assert cfg.rho0 == (0.7, 1.0) and cfg.axes == ("log", "step")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.axes = ("sigma",)
    p = argparse.ArgumentParser()
    order_cli.add_arguments(p)
    assert order_cli.config_from_args(p.parse_args([])) == OrderConfig()
    assert OrderConfig().axes == ("sigma", "step", "time")
    with pytest.raises(UsageError, match="--rho0 must be comma-separated numbers"):
        order_cli.config_from_args(p.parse_args(["--rho0", ","]))


def test_order_cli_end_to_end(tmp_path, tmp_path_factory, capsys):
    tiny = tiny_assets(tmp_path_factory)
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    args = ["analyze", "order", *common_args(tiny, db, out), "--sampler", "euler", "--nfe", "3", "--rho0", "0.7,1",
            "--axes", "sigma,step,time", "--seeds", "0-5", "--seed-sets", "2"]
    assert main(args) == 0  # in-process entry point (the subprocess path is covered by the other analyses)
    runs = run_rows(db)
    # untouched + const + 2 ramps on each of 3 axes at rho_0 = 0.7, 2 seed sets each; at rho_0 = 1 every rule is
    # the untouched point
    assert len(runs) == 8 * 2
    rows = list(csv.DictReader(open(out / "order.csv", newline="")))
    per_rho = [("-", "constant")] + [(a, o) for a in ("sigma", "step", "time") for o in ("increasing", "decreasing")]
    assert [(r["rho0"], r["axis"], r["order"]) for r in rows] == [("1.0", "-", "untouched")] + [
        (r0, a, o) for r0 in ("0.7", "1.0") for a, o in per_rho]
    base = float(rows[0]["fid"])
    for r in rows[1:]:
        assert float(r["diff"]) == pytest.approx(float(r["fid"]) - base, abs=1e-9)
        if r["rho0"] == "1.0":  # every ramp at rho_0 = 1 is the untouched network, bit for bit
            assert float(r["fid"]) == base and float(r["diff"]) == 0.0
    ramp = {(r["axis"], r["order"]): r for r in rows if r["rho0"] == "0.7"}
    for axis in ("sigma", "step", "time"):
        assert float(ramp[(axis, "increasing")]["rho_at_sigma_min"]) == pytest.approx(0.7)
        assert float(ramp[(axis, "decreasing")]["rho_at_sigma_max"]) == pytest.approx(0.7)
    assert ramp[("time", "increasing")]["rule"] == "ramp:up:0.7:log"  # the tiny net is EDM-preconditioned
    assert ramp[("step", "decreasing")]["rule"].startswith("ramp:down:0.7:step:")
    # Euler NFE 3: 3 steps start at the grid's 3 positive sigmas, so the step ramps' mean rho is (1 + rho_0) / 2
    assert float(ramp[("step", "increasing")]["mean_rho_steps"]) == pytest.approx(0.85, abs=1e-6)
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
    assert main([*args, "--axes", "clock"]) == 2
    assert "unknown ramp axis 'clock'" in capsys.readouterr().err
