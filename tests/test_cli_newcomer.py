"""What a newcomer types first: the shipped model and data sets by name, and the commands' shared defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skiptune.cli import main
from skiptune.experiment import load_reference
from skiptune.metrics import FeatureSet, get_extractor


def test_ref_and_eval_take_a_built_in_data_set_by_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "digits-ref.npz"
    assert main(["ref", "--data", "digits", "--features", "digits-classifier", "--out", str(out),
                 "--no-progress"]) == 0
    ext = get_extractor("digits-classifier")
    mine, lib = FeatureSet.load(out), load_reference("digits", ext)
    f = ext.feature_for("fid")
    assert mine.get(f).n == lib.get(f).n == 1497
    assert np.allclose(mine.get(f).mean, lib.get(f).mean, rtol=0, atol=1e-12)
    # the training digits against themselves (the reference records its features: no --features needed)
    assert main(["eval", "--images", "digits", "--ref", str(out), "--json", str(tmp_path / "r.json"),
                 "--no-progress"]) == 0
    fid = json.loads((tmp_path / "r.json").read_text())["fid"]
    assert fid["extractor"] == "digits-classifier" and fid["value"] == pytest.approx(0.0, abs=1e-6)
    assert main(["ref", "--data", "nosuch", "--out", str(tmp_path / "x.npz")]) == 2
    assert "built-in data set" in capsys.readouterr().err


def test_runs_reads_the_store_the_other_commands_write_by_default(tmp_path, monkeypatch, capsys):
    from skiptune.experiment import open_store

    monkeypatch.chdir(tmp_path)
    with open_store("runs/results.sqlite") as store:  # where sweep, search, analyze and compare write
        store.complete_run({"kind": "point", "rule": "none", "sampler": "heun"}, {"fid": 3.0})
    assert main(["runs", "--json"]) == 0
    assert [r["config"]["sampler"] for r in json.loads(capsys.readouterr().out)] == ["heun"]


def _options():
    import argparse

    from skiptune.cli import build_parser

    def walk(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    yield from walk(sub, [*path, name])
            elif a.option_strings and a.dest != "help":
                yield " ".join(path), a

    return list(walk(build_parser(), []))


def test_every_option_has_help_and_its_default_is_shown():
    import argparse

    from skiptune.cli import STANDARD_HELP, _HelpFormatter

    missing = [(cmd, a.option_strings[-1]) for cmd, a in _options() if not a.help]
    assert not missing, missing
    fmt = _HelpFormatter("skiptune")
    for cmd, a in _options():
        if a.default not in (None, False, argparse.SUPPRESS) and not a.required and a.help is not None:
            assert "default" in fmt._get_help_string(a), (cmd, a.option_strings)
    # the standard texts name only samplers and grids that exist
    from skiptune.experiment.generate import DISCRETE_GRIDS, SCHEDULE_GRIDS
    from skiptune.sampling import GRIDS, SAMPLERS

    assert all(name in STANDARD_HELP["--sampler"] for name in SAMPLERS)
    assert all(name in STANDARD_HELP["--grid"] for name in [*GRIDS, *DISCRETE_GRIDS, *SCHEDULE_GRIDS])


def test_an_edm_inception_pickle_that_would_run_code_is_refused_naming_the_flag(tmp_path, capsys):
    import os
    import pickle

    from cli_faults import assert_fails_cleanly

    evil = tmp_path / "inception.pkl"
    evil.write_bytes(pickle.dumps(os.system))  # a global outside the allow-list: nothing from it may run
    line = assert_fails_cleanly(["ref", "--data", "digits", "--features", "inception-v3-edm-pkl", "--weights",
                                 str(evil), "--out", str(tmp_path / "r.npz")], capsys, names=["--trust-code"],
                                untouched=[tmp_path])
    assert "trust_code" not in line
    # the flag reaches the feature network's loader, and one that has no such option says so
    assert_fails_cleanly(["ref", "--data", "digits", "--features", "digits-classifier", "--trust-code",
                          "--out", str(tmp_path / "r.npz")], capsys, names=["digits-classifier", "--trust-code"],
                         untouched=[tmp_path])


@pytest.mark.parametrize("argv", [
    ["sweep", "--model", "demo-digits", "--ref", "digits", "--out", "{file}/sub"],
    ["analyze", "norms", "--out", "{file}", "--no-db"],
    ["report", "--out", "{file}", "--db", "{tmp}/r.sqlite"],
    ["demo", "--out", "{file}"],
    ["runs", "--db", "{tmp}/r.sqlite", "--csv", "{file}/x.csv"],
])
def test_an_output_folder_that_cannot_be_written_fails_before_any_work(argv, tmp_path, capsys):
    from cli_faults import assert_fails_cleanly
    from skiptune.experiment import open_store

    open_store(tmp_path / "r.sqlite").close()
    (tmp_path / "plain-file").write_text("not a folder")
    argv = [a.format(file=tmp_path / "plain-file", tmp=tmp_path) for a in argv]
    assert_fails_cleanly(argv, capsys, names=["--out" if "--out" in argv else "--csv"], untouched=[tmp_path])
