"""Results store: config keys, records, crash safety under SIGKILL, concurrent writers, ``skiptune runs``."""

import csv
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import skiptune.store as store_module
from skiptune.cli import main
from skiptune.store import Metric, RunOutcome, Store, StoreError, canonical_json, config_key

# ---------------------------------------------------------------------------------------------------------------------
# A sweep worker. skiptune.store uses the standard library only (importing it does not import torch), so the
# worker starts in a fraction of a second.

WORKER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    import skiptune.store as mod
    db, n, log, order, stall_at, marker, pause = sys.argv[2:]
    n, stall_at, pause = int(n), int(stall_at), float(pause)
    indices = list(range(n)) if order == "forward" else list(reversed(range(n)))
    store = mod.Store(db)

    def compute(cfg):
        i = cfg["index"]
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {i}\\n")
        if i == stall_at:
            open(marker, "w").close()
            time.sleep(600)
        time.sleep(pause)
        return {"fid": 100.0 + i, "is": {"value": i / 2, "std": 0.25, "n_samples": 100}}

    for i in indices:
        cfg = {"rule": f"layer:{0.5 + 0.05 * i:.2f}", "sampler": "heun", "nfe": 9, "seeds": "0-99", "index": i}
        store.run_once(cfg, compute)
        store.complete_run({"kind": "progress", "index": i}, {}, result={"done": i})
    print("done")
""")


def expected_metrics(i: int) -> dict:
    return {"fid": 100.0 + i, "is": i / 2}


def start_worker(tmp_path: Path, db: Path, n: int, *, order="forward", stall_at=-1, pause=0.0, log="log.txt"):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    src = str(Path(store_module.__file__).parents[2])
    args = [sys.executable, str(script), src, str(db), str(n), str(tmp_path / log), order, str(stall_at),
            str(tmp_path / "stalled"), str(pause)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def computed_indices(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line.split()[1]) for line in path.read_text().splitlines() if line.strip()]


def check_consistent(db: Path, n: int, *, all_complete: bool) -> None:
    """Raw SQL view of the invariants: one row per config, metrics only on complete runs, exactly the
    expected metrics on each complete run, and a sound database file."""
    con = sqlite3.connect(str(db))
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute("SELECT key, config, status FROM runs").fetchall()
        assert len({k for k, _, _ in rows}) == len(rows)
        progress = [r for r in rows if json.loads(r[1]).get("kind") == "progress"]
        rows = [r for r in rows if json.loads(r[1]).get("kind") != "progress"]
        indices = [json.loads(c)["index"] for _, c, _ in rows]
        assert len(set(indices)) == len(indices)
        for key, cfg, status in rows:
            i = json.loads(cfg)["index"]
            assert key == config_key(json.loads(cfg))
            metrics = dict(con.execute("SELECT name, value FROM metrics WHERE run_key = ?", (key,)).fetchall())
            if status == "complete":
                assert metrics == expected_metrics(i)
            else:
                assert metrics == {}
        orphans = con.execute("SELECT COUNT(*) FROM metrics WHERE run_key NOT IN (SELECT key FROM runs)").fetchone()
        assert orphans[0] == 0
        if all_complete:
            assert sorted(indices) == list(range(n))
            assert {s for _, _, s in rows} == {"complete"}
            assert con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 2 * n
            assert len(progress) == n and {s for _, _, s in progress} == {"complete"}
    finally:
        con.close()


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "worker did not reach the stall point"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------------------------------
# Crash safety and concurrency


def test_sweep_killed_midway_and_restarted_loses_and_duplicates_nothing(tmp_path):
    db, n, stall = tmp_path / "runs.sqlite", 12, 7
    proc = start_worker(tmp_path, db, n, stall_at=stall)
    wait_for(tmp_path / "stalled", proc)
    # killed inside compute of config `stall`: 0..stall-1 complete, `stall` pending
    with Store(db) as s:
        counts = s.counts()
    # (each finished config also wrote one progress run, complete, without metrics)
    assert counts["complete"] == 2 * stall and counts["pending"] == 1 and counts["metrics"] == 2 * stall
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    check_consistent(db, n, all_complete=False)

    (tmp_path / "stalled").unlink()
    proc = start_worker(tmp_path, db, n)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    check_consistent(db, n, all_complete=True)
    # the restart computed only what was missing: the killed config once more, and the rest
    assert computed_indices(tmp_path / "log.txt") == list(range(stall + 1)) + list(range(stall, n))
    with Store(db) as s:
        rec = s.runs({"index": stall})[0]
    assert rec.attempts == 2 and rec.status == "complete" and rec.error is None


def complete_count(db: Path) -> int:
    try:
        con = sqlite3.connect(str(db), timeout=10)
        try:
            return con.execute("SELECT COUNT(*) FROM runs WHERE status = 'complete'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_repeated_kills_at_arbitrary_points(tmp_path):
    """A worker without pauses spends its time inside SQLite transactions; SIGKILL it as soon as the
    sweep has passed each target, so the kills land mid-transaction, between records or in compute."""
    db, n = tmp_path / "runs.sqlite", 50
    kills = 0
    for target, offset in ((4, 0.0), (11, 0.0007), (19, 0.0015), (27, 0.0025), (35, 0.004), (43, 0.006)):
        proc = start_worker(tmp_path, db, n, pause=0.0)
        deadline = time.monotonic() + 30
        while proc.poll() is None and complete_count(db) < target and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(offset)
        kills += proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        check_consistent(db, n, all_complete=False)
    assert kills >= 3  # most lives were cut short (the last ones may finish first on a fast machine)
    proc = start_worker(tmp_path, db, n, pause=0.0)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    check_consistent(db, n, all_complete=True)
    # every config was computed, and a kill costs at most the one computation it interrupted
    log = computed_indices(tmp_path / "log.txt")
    assert set(log) == set(range(n)) and len(log) <= n + kills


@pytest.mark.parametrize("orders", [("forward", "backward"), ("forward", "forward")])
def test_two_processes_write_concurrently(tmp_path, orders):
    """Disjoint work (meeting in the middle) and the same work at the same time (first commit wins)."""
    db, n = tmp_path / "runs.sqlite", 30
    procs = [start_worker(tmp_path, db, n, order=order, pause=0.005, log=f"{i}.txt") for i, order in enumerate(orders)]
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert out.strip() == "done"
    check_consistent(db, n, all_complete=True)
    done = computed_indices(tmp_path / "0.txt") + computed_indices(tmp_path / "1.txt")
    assert set(done) == set(range(n))


# ---------------------------------------------------------------------------------------------------------------------
# Keys and records


def test_config_key_is_canonical():
    base = {"model": "abc", "rule": "layer:0.7:1", "nfe": 9, "options": {"order": 2, "eta": 0.5}, "seeds": (0, 99)}
    reordered = {"seeds": [0, 99], "options": {"eta": 0.5, "order": 2.0}, "nfe": 9.0, "rule": "layer:0.7:1",
                 "model": "abc"}
    assert config_key(base) == config_key(reordered)
    assert canonical_json(base) == ('{"model":"abc","nfe":9,"options":{"eta":0.5,"order":2},'
                                    '"rule":"layer:0.7:1","seeds":[0,99]}')
    assert len(config_key(base)) == 64
    for change in ({"nfe": 19}, {"rule": "layer:0.71:1"}, {"options": {"order": 3, "eta": 0.5}}, {"extra": None}):
        assert config_key({**base, **change}) != config_key(base)
    with pytest.raises(ValueError, match="finite"):
        config_key({"rho": math.nan})
    with pytest.raises(ValueError, match="keys must be strings"):
        config_key({"a": {1: 2}})
    with pytest.raises(ValueError, match="canonical JSON"):
        config_key({"a": object()})
    with pytest.raises(ValueError, match="mapping"):
        config_key([1, 2])


def test_record_run_metrics_and_provenance(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        cfg = {"rule": "layer:0.7:1", "sampler": "heun", "nfe": 9}
        with pytest.raises(ValueError, match="needs its metrics"):
            s.complete_run(cfg, None)
        assert s.complete_run(cfg, {"fid": Metric(3.5, std=0.1, ci_low=3.3, ci_high=3.7, ci_level=0.95,
                                               feature_net="inception-v3", feature_checksum="f" * 64,
                                               n_samples=2000, details={"seeds": "0-1999"}),
                                 "is": 12.0}, timings={"sample_s": 1.5})
        key = config_key(cfg)
        assert s.has_run(key)
        rec = s.run(key)
        fid = rec.metrics["fid"]
        assert (fid.value, fid.std, fid.ci_low, fid.ci_high, fid.n_samples) == (3.5, 0.1, 3.3, 3.7, 2000)
        assert fid.feature_net == "inception-v3" and fid.details == {"seeds": "0-1999"}
        assert rec.metrics["is"].value == 12.0 and rec.timings == {"sample_s": 1.5}
        assert rec.versions["python"] and rec.versions["skiptune"] and rec.created <= rec.updated
        # first writer wins; overwrite replaces the metric set
        assert not s.complete_run(cfg, {"fid": 9.0})
        assert s.run(key).metrics["fid"].value == 3.5
        assert s.complete_run(cfg, {"fid": 9.0}, overwrite=True)
        assert set(s.run(key).metrics) == {"fid"} and s.run(key).metrics["fid"].value == 9.0
        s.record_metric(key, "kid", {"value": 0.01, "ci": (0.0, 0.02)}, n_samples=2000)
        s.record_metric(key, "kid", 0.02)  # replaces, never duplicates
        assert s.run(key).metrics["kid"].value == 0.02 and s.counts()["metrics"] == 2
        with pytest.raises(StoreError, match="record the run"):
            s.record_metric("0" * 64, "fid", 1.0)
        # a JSON result payload (analyses), replaced only with overwrite
        unit = {"kind": "analysis-unit", "unit": "norm_ratio"}
        s.complete_run(unit, {}, result={"mean": 0.446})
        s.complete_run(unit, {}, result={"mean": 0.5}, overwrite=True)
        assert s.run(config_key(unit)).result == {"mean": 0.5} and len(s.runs({"unit": "norm_ratio"})) == 1


def test_run_once_skips_completed_and_retries_failed(tmp_path):
    calls = []

    def compute(cfg):
        calls.append(cfg["nfe"])
        if cfg["nfe"] == 5 and calls.count(5) == 1:
            raise RuntimeError("sampler diverged")
        return RunOutcome({"fid": float(cfg["nfe"])}, timings={"sample_s": 0.5})

    with Store(tmp_path / "r.sqlite") as s:
        for _ in range(2):
            rec = s.run_once({"nfe": 9}, compute)
        assert calls == [9] and rec.metrics["fid"].value == 9.0 and rec.timings["sample_s"] == 0.5
        assert "compute_s" in rec.timings
        with pytest.raises(RuntimeError, match="diverged"):
            s.run_once({"nfe": 5}, compute)
        failed = s.run(config_key({"nfe": 5}))
        assert failed.status == "failed" and "diverged" in failed.error and failed.metrics == {}
        assert s.run_once({"nfe": 5}, compute).status == "complete" and calls == [9, 5, 5]
        assert s.run_once({"nfe": 9}, compute, overwrite=True).metrics["fid"].value == 9.0 and calls[-1] == 9
        with pytest.raises(ValueError, match="mapping of metrics"):
            s.run_once({"nfe": 1}, lambda cfg: 3.0)


def test_filters_and_csv_export(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        for sampler in ("heun", "unipc"):
            for nfe in (9, 19):
                cfg = {"rule": "layer:0.7:1", "sampler": sampler, "nfe": nfe, "opts": {"order": 2 if sampler == "unipc"
                                                                                        else None}}
                s.complete_run(cfg, {"fid": nfe / 10 + (sampler == "unipc")})
        s.start_run({"rule": "none", "sampler": "heun", "nfe": 9})
        assert len(s.runs()) == 5 and len(s.runs(status="complete")) == 4 and len(s.runs(status="pending")) == 1
        heun = s.runs({"sampler": "heun"}, status="complete")
        assert [r.config["nfe"] for r in heun] == [9, 19]
        assert len(s.runs({"sampler": "heun", "nfe": "9"})) == 2   # command-line text matches numbers
        assert len(s.runs({"nfe": 9.0, "opts.order": 2})) == 1
        assert s.runs({"nfe": 39}) == [] and s.runs({"missing.field": 1}) == []
        out = tmp_path / "x.csv"
        assert s.export_csv(out, {"sampler": "unipc"}) == 2
        rows = list(csv.DictReader(out.open()))
        assert [(r["sampler"], int(r["nfe"]), float(r["fid"])) for r in rows] == [("unipc", 9, 1.9),
                                                                                  ("unipc", 19, 2.9)]
        assert rows[0]["opts.order"] == "2" and rows[0]["status"] == "complete" and len(rows[0]["key"]) == 64


# ---------------------------------------------------------------------------------------------------------------------
# skiptune runs


@pytest.fixture()
def sweep_db(tmp_path):
    db = tmp_path / "sweep.sqlite"
    with Store(db) as s:
        for sampler in ("heun", "unipc"):
            for nfe in (9, 19):
                for rho in (0.7, 1.0):
                    cfg = {"model": "m1", "rule": f"layer:{rho:g}:1", "sampler": sampler, "nfe": nfe, "seeds": "0-99"}
                    fid = 10.0 * rho + nfe / 100 + (sampler == "heun")
                    s.complete_run(cfg, {"fid": Metric(fid, ci_low=fid - 0.5, ci_high=fid + 0.5, n_samples=100),
                                       "is": 2.0 + rho})
        s.start_run({"model": "m1", "rule": "layer:0.5:1", "sampler": "heun", "nfe": 9, "seeds": "0-99"})
    return db


def test_runs_cli_through_module_entry_point(sweep_db, tmp_path):
    out_csv = tmp_path / "out.csv"
    proc = subprocess.run([sys.executable, "-m", "skiptune", "runs", "--db", str(sweep_db), "--filter", "sampler=heun",
                           "--filter", "nfe=9", "--filter", "rule=layer:0.7", "--metric", "fid", "--csv",
                           str(out_csv)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "model=m1" in lines[0] and "sampler=heun" in lines[0] and "rule=layer:0.7:1" in lines[0]
    body = [line for line in lines if "complete" in line]
    # heun, nfe 9, rho 0.7: fid = 7 + 0.09 + 1 with a 95% half-width 0.5
    assert len(body) == 1 and "8.09 ±0.5" in body[0] and "is" not in lines[2].split()
    assert lines[-1] == f"wrote 1 runs to {out_csv}"
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 1 and float(rows[0]["fid"]) == pytest.approx(8.09) and "is" not in rows[0]


def test_runs_cli_listing_status_sort_json_and_errors(sweep_db, capsys):
    assert main(["runs", "--db", str(sweep_db)]) == 0
    text = capsys.readouterr().out
    assert text.count("complete") == 8 and text.count("pending") == 1 and "common: model=m1  seeds=0-99" in text
    assert main(["runs", "--db", str(sweep_db), "--status", "pending"]) == 0
    assert "layer:0.5:1" in capsys.readouterr().out
    assert main(["runs", "--db", str(sweep_db), "--filter", "sampler=unipc", "--sort", "fid", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    fids = [d["metrics"]["fid"]["value"] for d in data]
    assert len(data) == 4 and fids == sorted(fids) and data[0]["config"]["rule"] == "layer:0.7:1"
    assert main(["runs", "--db", str(sweep_db), "--filter", "nfe=39"]) == 0
    assert "no runs match" in capsys.readouterr().out
    assert main(["runs", "--db", str(sweep_db), "--filter", "nfe"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["runs", "--db", str(sweep_db.parent / "missing.sqlite")]) == 2
    assert "no results store" in capsys.readouterr().err
    assert not (sweep_db.parent / "missing.sqlite").exists()
    (sweep_db.parent / "junk.sqlite").write_text("not a database")
    assert main(["runs", "--db", str(sweep_db.parent / "junk.sqlite")]) == 2
    assert "not a" in capsys.readouterr().err


# -- stores that cannot be used: a StoreError that says why, never an sqlite3 traceback, and nothing left behind ----

def _filled(path: Path, runs: int = 150) -> Path:
    with Store(path) as s:
        for i in range(runs):
            s.complete_run({"i": i, "pad": "x" * 400}, {"fid": float(i)})
    return path


def test_a_store_damaged_after_it_was_opened_is_a_store_error(tmp_path):
    db = _filled(tmp_path / "r.sqlite")
    data = bytearray(db.read_bytes())
    mid = (len(data) // 4096 // 2) * 4096
    data[mid:mid + 3 * 4096] = bytes(range(256)) * 48  # three pages in the middle overwritten
    db.write_bytes(bytes(data))
    with Store(db, create=False) as s:  # the first pages are fine: it opens
        with pytest.raises(StoreError, match="is corrupt"):
            s.verify()  # a full read finds the damage before any work
        with pytest.raises(StoreError, match="is corrupt"):
            s.runs()  # and so does a read that reaches the damaged pages
        assert not s._conn.in_transaction  # the error left no read transaction open
    good = _filled(tmp_path / "good.sqlite", 3)
    with Store(good) as s:
        s.verify()


def test_opening_a_store_changes_nothing_in_its_file(tmp_path):
    db = _filled(tmp_path / "r.sqlite", 5)
    before = db.read_bytes()
    Store(db).close()
    with Store(db, create=False) as s:
        s.runs()
        s.verify()
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.sqlite"]


def test_a_store_that_cannot_be_created_names_the_reason_and_creates_nothing(tmp_path):
    from skiptune.store.database import check_new_store

    (tmp_path / "file").write_text("x")
    for make in (check_new_store, Store):
        with pytest.raises(StoreError, match="is a file, not a folder"):
            make(tmp_path / "file" / "sub" / "r.sqlite")
    check_new_store(tmp_path / "new" / "deeper" / "r.sqlite")  # a folder that can be made: fine, nothing made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_read_only_store_says_so_and_leaves_no_files(tmp_path, monkeypatch):
    db = _filled(tmp_path / "r.sqlite", 3)
    before = db.read_bytes()
    real = sqlite3.connect
    # SQLite opens a file it may not write read-only; as root (who may write any file) that is simulated with mode=ro
    monkeypatch.setattr(sqlite3, "connect", lambda name, *a, **k: real(f"file:{name}?mode=ro", *a, uri=True, **k))
    with pytest.raises(StoreError, match="read-only.*another results store"):
        Store(db)
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.sqlite"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write read-only files")
def test_a_chmod_read_only_store_says_so(tmp_path):
    db = _filled(tmp_path / "r.sqlite", 3)
    db.chmod(0o444)
    with pytest.raises(StoreError, match=f"the file {db} is read-only"):
        Store(db)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.sqlite"]
