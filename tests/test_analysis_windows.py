"""``skiptune analyze windows``: window bounds, identities of the window rules, resume through the CLI."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math

import pytest

from analysis_tiny import common_args, run_cli, run_rows, tiny_assets
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.scoring import FidSetup
from skiptune.analysis.windows import WindowsConfig, run_windows, step_windows
from skiptune.cli import main
from skiptune.cli.analyses import windows as windows_cli
from skiptune.core.errors import InputError, UsageError
from skiptune.sampling import edm_sigmas
from skiptune.skip import as_rule
from skiptune.store import Store

# one thread, as in the CLI subprocesses: the reference statistics (part of every run key) are then bit-identical
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("steps,w", [(10, 1), (10, 3), (52, 4), (5, 5), (4, 9)])
def test_windows_partition_the_grid(steps, w):
    """Every step-start sigma is in exactly one window, which holds steps jw..(j+1)w-1 (the last may be
    shorter); the bounds as parsed back from the rule text (6 digits) still separate the grid points."""
    sig = [float(s) for s in edm_sigmas(steps)]
    wins = step_windows(sig, w, "const:0.7")
    assert len(wins) == math.ceil(steps / w)
    assert [(x.first_step, x.last_step) for x in wins] == [(j * w, min((j + 1) * w, steps) - 1)
                                                           for j in range(len(wins))]
    for i, s in enumerate(sig[:-1]):
        inside = [x.index for x in wins if float(as_rule(x.rule).factor(0, 4, s)) == 0.7]
        assert inside == [i // w], (i, s)
    # rho is 1 outside every window (the final sigma 0 belongs to the last window: no evaluation happens there)
    assert all(float(as_rule(x.rule).factor(0, 4, 2 * sig[0] * 1.01)) == 1.0 for x in wins)
    # Heun's corrector of step i runs at sigma_{i+1}: tuned with the window of step i + 1
    for i in range(steps - 1):
        owner = [x.index for x in wins if float(as_rule(x.rule).factor(0, 4, sig[i + 1])) == 0.7]
        assert owner == [(i + 1) // w]
    # the bounds are geometric means of neighbouring grid sigmas
    for x in wins[1:]:
        assert x.hi == pytest.approx(math.sqrt(sig[x.first_step - 1] * sig[x.first_step]), rel=1e-12)


def test_window_input_errors():
    sig = [float(s) for s in edm_sigmas(4)]
    with pytest.raises(ValueError, match="whole number of steps"):
        step_windows(sig, 0, "const:0.7")
    with pytest.raises(ValueError, match="strictly decreasing"):
        step_windows(sig[::-1], 1, "const:0.7")
    with pytest.raises(ValueError, match="finite and > 0"):
        step_windows(sig, 1, "const:0")


@pytest.mark.parametrize("kwargs,message", [
    ({"window_steps": 0}, "window_steps must be an integer >= 1"),
    ({"window_steps": 1.5}, "window_steps must be an integer >= 1"),
    ({"rule": "const:0"}, "finite and > 0"),
    ({"rule": "bogus:1"}, "cannot read rule"),
    ({"sampler": "nope"}, "unknown sampler 'nope'"),
    ({"nfe": 0}, "nfe must be an integer >= 1"),
    ({"sampler": "heun", "nfe": 8}, "cannot use exactly 8 NFE"),
    ({"only": ()}, "only must be a non-empty sequence of window indices"),
    ({"only": (0, -1)}, "only must be a non-empty sequence of window indices"),
    ({"only": (0.5,)}, "only must be a non-empty sequence of window indices"),
    ({"only": "0,1"}, "only must be a non-empty sequence of window indices"),
])
def test_windows_config_refuses_invalid_settings_on_construction(kwargs, message):
    with pytest.raises(InputError, match=message):
        WindowsConfig(**kwargs)


def test_windows_config_is_frozen_normalised_and_matches_the_cli_defaults():
    cfg = WindowsConfig(only=[3, 0], rule="layer:0.7")
    assert cfg.only == (3, 0) and cfg.canonical_rule == "layer:0.7:1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.nfe = 3
    p = argparse.ArgumentParser()
    windows_cli.add_arguments(p)
    assert windows_cli.config_from_args(p.parse_args([])) == WindowsConfig()
    assert windows_cli.config_from_args(p.parse_args(["--only", "2, 0"])).only == (2, 0)
    for bad in ("x", "1,a", ","):
        with pytest.raises(UsageError, match="--only must be comma-separated window indices"):
            windows_cli.config_from_args(p.parse_args(["--only", bad]))


def test_windows_cli_end_to_end_resumes_and_matches_identities(tmp_path, tmp_path_factory, capsys):
    tiny = tiny_assets(tmp_path_factory)
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    args = ["analyze", "windows", *common_args(tiny, db, out), "--sampler", "euler", "--nfe", "4",
            "--window-steps", "2", "--seeds", "0-5", "--seed-sets", "2"]
    # an interrupted run: only window 0 was computed (untouched, all steps, window 0; 2 seed sets each)
    first = run_cli(*args, "--only", "0")
    assert first.returncode == 0, first.stderr
    runs1 = run_rows(db)
    assert len(runs1) == 3 * 2 and all(v[0] == "complete" for v in runs1.values())
    assert [r["window"] for r in json.loads((out / "windows.json").read_text())["rows"]] == ["none", "all", "0"]
    # the whole analysis computes only window 1 (2 runs); the finished runs are not touched
    assert main(args) == 0
    runs2 = run_rows(db)
    assert len(runs2) == 4 * 2 and all(runs2[k] == v for k, v in runs1.items())
    rows = list(csv.DictReader(open(out / "windows.csv", newline="")))
    assert [r["window"] for r in rows] == ["none", "all", "0", "1"]
    assert [r["steps"] for r in rows] == ["-", "0-3", "0-1", "2-3"]
    assert float(rows[0]["diff"]) == 0.0  # the untouched network against itself
    for r in rows:  # the paired difference is the difference of the means
        assert float(r["diff"]) == pytest.approx(float(r["fid"]) - float(rows[0]["fid"]), abs=1e-9)
    assert (out / "windows.png").stat().st_size > 1000 and "| window |" in (out / "windows.md").read_text()
    # a rerun recomputes nothing
    assert main(args) == 0
    assert run_rows(db) == runs2
    # the library call with the same settings is the same analysis: same key and rows, nothing recomputed
    ctx = AnalysisContext(model=str(tiny["model"]), data=str(tiny["data"]), db=None, progress=False)
    setup = FidSetup(ctx.scorer, ctx.model_ref, seeds="0-5", seed_sets=2)
    stored = json.loads((out / "windows.json").read_text())
    with Store(db) as store:
        lib = run_windows(ctx.net, setup, WindowsConfig(sampler="euler", nfe=4, window_steps=2), store=store)
    assert lib.config == stored["config"] and [r["window"] for r in lib.rows] == ["none", "all", "0", "1"]
    assert [r["fid"] for r in lib.rows] == [float(r["fid"]) for r in rows]
    assert run_rows(db) == runs2
    with pytest.raises(InputError, match=r"window indices \[2\] do not exist"):  # checked before any sampling
        run_windows(ctx.net, setup, WindowsConfig(sampler="euler", nfe=4, window_steps=2, only=(2,)))
    # one window of 4 steps covers every evaluation: exactly the rule applied throughout
    assert main([*args[:-4], "--window-steps", "4", "--seeds", "0-5", "--seed-sets", "2"]) == 0
    assert len(run_rows(db)) == 5 * 2
    res = json.loads((out / "windows.json").read_text())
    by = {r["window"]: r for r in res["rows"]}
    # the two FIDs come from different processes (the CLI run above and this one), whose float64 BLAS
    # may sum in another order: equal to round-off, not bit for bit
    assert by["0"]["fid"] == pytest.approx(by["all"]["fid"], rel=1e-12, abs=0)
    assert by["0"]["rule"].startswith("window:0:")
    capsys.readouterr()
    assert main([*args, "--only", "7"]) == 2
    assert "window indices [7] do not exist" in capsys.readouterr().err
