"""The shared analysis framework: unit caching, result files, NaN round trips and ``skiptune report``."""

from __future__ import annotations

import csv
import json
import math

import pytest

from analysis_tiny import run_cli
from skiptune.analysis import AnalysisResult, cached, record_result, stored_results
from skiptune.cli import main
from skiptune.experiment.results import UNIT_VERSION
from skiptune.report.tables import write_result
from skiptune.store import Store


def _result(name="alpha", x=1.5, **config) -> AnalysisResult:
    rows = [{"rule": "none", "fid": 10.0, "ci": math.nan, "n": 3}, {"rule": "const:0.7", "fid": x, "ci": 0.25, "n": 3}]
    return AnalysisResult(name, {"sampler": "heun", "nfe": 9, **config}, rows, {"best": "const:0.7", "gap": math.inf},
                          ["first note", "second note"])


def test_cached_computes_once_and_survives_a_new_store(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": 3.25, "list": [1, 2]}

    cfg = {"rule": "layer:0.7:1", "sigma": 2.5}
    with Store(tmp_path / "r.sqlite") as store:
        assert cached(store, "unit-a", cfg, compute) == {"value": 3.25, "list": [1, 2]}
        assert cached(store, "unit-a", dict(reversed(cfg.items())), compute) == {"value": 3.25, "list": [1, 2]}
        assert len(calls) == 1  # key order does not matter
        cached(store, "unit-a", {**cfg, "sigma": 5.0}, compute)  # another config: computed
        cached(store, "unit-b", cfg, compute)  # another unit name: computed
        assert len(calls) == 3
    with Store(tmp_path / "r.sqlite") as again:  # a new process / connection on the same file
        assert cached(again, "unit-a", cfg, compute) == {"value": 3.25, "list": [1, 2]}
        assert len(calls) == 3
        names = {r.config["unit"] for r in again.runs({"kind": "analysis-unit"})}
        assert names == {"unit-a", "unit-b"}  # units are runs of the store like every other result
    # without a store the value is simply computed
    assert cached(None, "unit-a", cfg, compute)["value"] == 3.25 and len(calls) == 4
    assert UNIT_VERSION >= 1


def test_cached_round_trips_nan_and_inf(tmp_path):
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.0], "c": {"d": math.nan}, "s": "text"}
    with Store(tmp_path / "r.sqlite") as store:
        cached(store, "u", {"k": 1}, lambda: value)
        back = cached(store, "u", {"k": 1}, lambda: pytest.fail("recomputed"))
    assert math.isnan(back["a"]) and math.isnan(back["c"]["d"])
    assert back["b"] == [math.inf, -math.inf, 1.0] and back["s"] == "text"


def test_record_result_round_trip_keeps_nan_and_column_order(tmp_path):
    newer = _result(x=2.5)
    newer.rows[0]["z_last"] = 1  # a column only some rows have
    with Store(tmp_path / "r.sqlite") as store:
        record_result(store, _result())
        record_result(store, newer)  # same config: replaces the stored result
        record_result(store, _result("beta"))
        got = stored_results(store)
        only_alpha = stored_results(store, "alpha")
    assert [r.name for r in got] == ["alpha", "beta"]
    assert len(only_alpha) == 1 and only_alpha[0].rows[1]["fid"] == 2.5
    back = got[1]
    assert back.columns() == ["rule", "fid", "ci", "n"]  # insertion order, not the store's sorted keys
    assert math.isnan(back.rows[0]["ci"]) and back.summary["gap"] == math.inf
    assert list(back.summary) == ["best", "gap"] and back.notes == ["first note", "second note"]
    assert back.key == _result("beta").key
    assert got[0].columns() == ["rule", "fid", "ci", "n", "z_last"]


def test_write_result_files_are_readable(tmp_path):
    res = _result()
    drawn = []

    def plot(r, path):
        drawn.append(r.name)
        path.write_bytes(b"\x89PNG fake")

    paths = write_result(res, tmp_path / "out", plot)
    assert set(paths) == {"json", "csv", "md", "png"} and drawn == ["alpha"]
    data = json.loads(paths["json"].read_text())  # Python's json reads NaN/Infinity back
    assert AnalysisResult.from_dict(data).rows[1] == res.rows[1]
    assert math.isnan(data["rows"][0]["ci"])
    rows = list(csv.DictReader(open(paths["csv"], newline="")))
    assert [r["rule"] for r in rows] == ["none", "const:0.7"]
    assert float(rows[1]["fid"]) == 1.5 and math.isnan(float(rows[0]["ci"]))
    md = paths["md"].read_text()
    assert "| rule | fid | ci | n |" in md and "| none | 10 | nan | 3 |" in md
    assert "- first note" in md and "- best: const:0.7" in md and "![alpha](alpha.png)" in md
    assert set(write_result(res, tmp_path / "plain")) == {"json", "csv", "md"}  # no plot, no png


def test_report_collects_stored_results_through_the_cli(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    nan = math.nan
    order = AnalysisResult("order", {"sampler": "euler", "nfe": 3}, [
        {"rho0": 1.0, "order": "untouched", "rule": "none", "fid": 20.0, "fid_ci_low": 18.0, "fid_ci_high": 22.0,
         "diff": 0.0, "diff_ci_low": 0.0, "diff_ci_high": 0.0},
        *({"rho0": 0.7, "order": o, "rule": r, "fid": f, "fid_ci_low": nan, "fid_ci_high": nan, "diff": f - 20.0,
           "diff_ci_low": nan, "diff_ci_high": nan}
          for o, r, f in (("constant", "const:0.7", 19.0), ("increasing", "ramp:up:0.7", 18.5),
                          ("decreasing", "ramp:down:0.7", 21.0)))], {"best_order[0.7]": "increasing"}, ["a note"])
    with Store(db) as store:
        record_result(store, _result())
        record_result(store, order)
    out = tmp_path / "rep"
    res = run_cli("report", "--db", str(db), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "2 analyses" in res.stdout
    text = (out / "report.md").read_text()
    assert text.index("## alpha") < text.index("## order")
    assert "| rule | fid | ci | n |" in text and "| const:0.7 | 1.5 | 0.25 | 3 |" in text
    assert "- best_order[0.7]: increasing" in text and "- a note" in text
    assert "Config: `nfe=3, sampler=euler`" in text  # the stored config has sorted keys
    # the registered module redraws its figure from the stored result alone; the unknown name has none
    figure = out / "report-files" / "001" / "order.png"
    assert figure.stat().st_size > 1000 and f"![order]({figure.relative_to(out)})" in text
    assert not (out / "report-files" / "000" / "alpha.png").exists()
    assert main(["report", "--db", str(tmp_path / "none.sqlite"), "--out", str(out)]) == 2
    assert "no results store" in capsys.readouterr().err
