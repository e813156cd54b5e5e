"""A results store written before the experiment layer (schema 1, ``tests/data/store-v1.sqlite``, made by the four
commands in tests/data/README.md) opens, lists its runs, merges the runs that are one point, and is reused."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from skiptune.cli import main
from skiptune.demo.assets import classifier_extractor
from skiptune.experiment import POINT_KIND, Scorer, load_reference, open_store
from skiptune.experiment.results import stored_results
from skiptune.io import load_model
from skiptune.runs.sweep import SweepSpec, run_sweep, seed_sets
from skiptune.sampling import nfe_for_steps
from skiptune.store import SCHEMA_VERSION, Store, StoreError

DATA = Path(__file__).parent / "data"
#: the only spellings of rho = 1 that the v1 commands wrote (sweep: none, const:1; search: layer:1:1)
IDENTITY = {"none", "const:1", "layer:1:1"}


def _v1_copy(tmp_path: Path) -> Path:
    db = tmp_path / "store-v1.sqlite"
    shutil.copyfile(DATA / "store-v1.sqlite", db)
    return db


def _v1_rows(db: Path) -> list[tuple[dict, str, float | None]]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT r.config, r.status, m.value FROM runs r LEFT JOIN metrics m"
                           " ON m.run_key = r.key AND m.name = 'fid'").fetchall()
        assert con.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == ("1",)
    return [(json.loads(c), s, v) for c, s, v in rows]


def _point_of_v1(cfg: dict) -> tuple:
    """What makes a v1 run a point, derived here by hand from the v1 formats (not by the migration code)."""
    nfe = cfg["nfe"] if "nfe" in cfg else nfe_for_steps(cfg["sampler"], cfg["steps"])
    model = cfg["model"]["sha256"] if isinstance(cfg["model"], dict) else cfg["model"]
    rule = "none" if cfg["rule"] in IDENTITY else cfg["rule"]
    return model, cfg["sampler"], nfe, rule, cfg["seeds"], cfg["grid"], cfg["batch"], cfg["ref"]


def test_a_v1_store_is_migrated_in_place_and_merges_identical_points(tmp_path):
    db = _v1_copy(tmp_path)
    before = _v1_rows(db)
    points = {}
    for cfg, status, fid in before:
        assert cfg["kind"] in ("sweep-point", "compare-training-fid") and status == "complete"
        points.setdefault(_point_of_v1(cfg), set()).add(fid)
    # one FID per point: the v1 store held the same point several times, and each copy has the same number
    assert all(len(fids) == 1 for fids in points.values())
    assert len(points) < len(before)
    with pytest.raises(StoreError, match="open_store"):  # the plain store refuses to guess
        Store(db)
    with open_store(db) as store:
        runs = store.runs({"kind": POINT_KIND})
        assert len(runs) == len(points)
        assert store.counts()["pending"] == store.counts()["failed"] == 0
        got = {(r.config["model"], r.config["sampler"], r.config["nfe"], r.config["rule"], r.config["seeds"],
                r.config["grid"], r.config["batch"], r.config["ref"]): r.metrics["fid"].value for r in runs}
        assert got == {k: next(iter(v)) for k, v in points.items()}
        names = {r.get("name") for r in stored_results(store)}
        assert names >= {"windows"} and len(stored_results(store, "compare-training")) == 1
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)
        assert "analyses" not in {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    with open_store(db) as again:  # opening twice changes nothing
        assert len(again.runs()) == len(runs) + 2


def test_the_migrated_runs_are_reused_by_the_same_sweep(tmp_path, monkeypatch):
    db = _v1_copy(tmp_path)
    ext = classifier_extractor()
    scorer = Scorer(ext, load_reference("digits", ext))
    spec = SweepSpec(rules=["none", "const:1", "const:0.7", "layer:0.8"], samplers=["heun", "unipc"], nfes=[5],
                     seed_sets=seed_sets("0-31", 2), end="zero")  # v1 grids all ended at 0
    import skiptune.experiment.scoring as scoring

    monkeypatch.setattr(scoring, "generate", lambda *a, **k: pytest.fail("a stored point was computed again"))
    with open_store(db) as store:
        rows = run_sweep(load_model("demo-digits"), spec, store=store, scorer=scorer, progress=False)
    recorded = json.loads((DATA / "regression-v1.json").read_text())["rows"]
    by_point = {(r.sampler, r.rule): r.estimate.values for r in rows}
    for rec in recorded:
        rule = "none" if rec["rule"] in IDENTITY else rec["rule"]
        k = seed_sets("0-31", 2).index(rec["seeds"])
        assert by_point[(rec["sampler"], rule)][k] == rec["fid"]


def test_the_runs_command_lists_a_v1_store(tmp_path, capsys):
    db = _v1_copy(tmp_path)
    assert main(["runs", "--db", str(db), "--filter", "rule=const:1", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed and {r["config"]["rule"] for r in listed} == {"none"}  # const:1 is listed as the point it is
