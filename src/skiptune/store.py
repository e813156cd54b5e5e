"""Results store: every generated sample set (a *run*), its full config and its metrics, in SQLite.

One row per run in ``runs``, keyed by :func:`config_key`, the SHA-256 of the canonical JSON of the
full configuration (model hash, rule, mode, sampler and its options, NFE, seed range, batch, dtype,
device, ...: whatever the caller puts in the config dict). One row per (run, metric name) in
``metrics``, with the value, its std / confidence interval if any, the feature network and its
weights checksum, and the sample count. ``analyses`` holds JSON results of analyses by (name, key).

Crash safety and concurrency (the store is written by sweeps that may be killed at any point, and
by several processes at once):

- WAL journal, ``synchronous=FULL``; every write is one ``BEGIN IMMEDIATE`` ... ``COMMIT``
  transaction, so a process killed with SIGKILL leaves either the whole record or none of it.
- A run is *complete* only when its metrics are written: the status change pending -> complete
  and the metric rows are inserted in the same transaction. A run killed mid-computation stays
  ``pending`` (or ``failed`` after an exception) and is recomputed by :meth:`Store.run_once`.
- Primary keys (``runs.key``; ``metrics(run_key, name)``; ``analyses(name, key)``) make every
  write an upsert: restarting a sweep, or two processes finishing the same run, never duplicates a
  row. When two writers complete the same run, the first commit wins and the second is discarded.
- Every connection waits up to ``timeout`` seconds for the write lock (SQLite busy handler).
  WAL needs a local file system (not NFS).

The module uses the standard library only, so that workers can import it cheaply.

Example::

    store = Store("results.sqlite")
    config = {"model": sha, "rule": "layer:0.7:1", "sampler": "heun", "nfe": 9, "seeds": "0-1999"}
    record = store.run_once(config, lambda cfg: {"fid": compute_fid(cfg)})
    record.metrics["fid"].value
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("pending", "complete", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'complete', 'failed')),
    skiptune_version TEXT,
    torch_version TEXT,
    python_version TEXT,
    git_revision TEXT,
    host TEXT,
    pid INTEGER,
    timings TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS metrics (
    run_key TEXT NOT NULL REFERENCES runs (key) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value REAL,
    std REAL,
    ci_low REAL,
    ci_high REAL,
    ci_level REAL,
    feature_net TEXT,
    feature_checksum TEXT,
    n_samples INTEGER,
    details TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    PRIMARY KEY (run_key, name)
);
CREATE TABLE IF NOT EXISTS analyses (
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (name, key)
);
"""


class StoreError(RuntimeError):
    """The results store cannot be used as asked (unknown run, newer schema, ...)."""


# ---------------------------------------------------------------------------------------------------------------------
# Canonical configs and their keys


def _canonical(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"config value at {where} is {value}: configs must hold finite numbers")
        # 9.0 and 9 name the same setting; -0.0 and 0.0 as well
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"config keys must be strings, got {k!r} at {where}")
            out[k] = _canonical(v, f"{where}.{k}" if where else k)
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return _canonical(value.item(), where)  # numpy / torch scalars
    raise ValueError(f"config value at {where or 'top level'} has type {type(value).__name__}, which has no "
                     "canonical JSON form; convert it to a str, number, bool, list or dict")


def canonical_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as plain JSON data: tuples -> lists, integral floats -> ints, scalars unwrapped.

    Raises ValueError for non-finite numbers, non-string keys and values without a JSON form.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"a run config must be a mapping (dict), got {type(config).__name__}")
    return _canonical(config, "")


def canonical_json(config: Mapping[str, Any]) -> str:
    """Canonical JSON text of a config: sorted keys, no whitespace, ASCII, shortest float repr."""
    return json.dumps(canonical_config(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def config_key(config: Mapping[str, Any]) -> str:
    """``sha256(canonical_json(config))`` as 64 hex digits: the deterministic identity of a run.

    Independent of key order, of tuple vs list and of ``9`` vs ``9.0``; any other change of any
    value gives another key. Rule strings are taken literally: pass ``str(parse_rule(text))`` so
    that ``layer:0.7`` and ``layer:0.7:1.0`` share a key.
    """
    return hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Provenance


def _package_version(name: str) -> str | None:
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The git commit of the skiptune source tree (``+dirty`` if files changed or were added), or None."""
    here = str(Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def environment() -> dict[str, str | None]:
    """Versions recorded with every run: skiptune, torch, python, git revision, host."""
    return {
        "skiptune_version": _package_version("skiptune"),
        "torch_version": _package_version("torch"),
        "python_version": platform.python_version(),
        "git_revision": git_revision(),
        "host": socket.gethostname(),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Metric:
    """One number about a run, with what is needed to trust or reject it.

    ``ci_low``/``ci_high`` bound a ``ci_level`` confidence interval (e.g. 0.95); ``feature_net`` and
    ``feature_checksum`` name the feature extractor and the sha256 of its weights; ``n_samples`` is
    the number of generated samples behind the value; ``details`` any further JSON data.
    """

    value: float
    std: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    feature_net: str | None = None
    feature_checksum: str | None = None
    n_samples: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, obj: float | Metric | Mapping[str, Any]) -> Metric:
        """A Metric from a number, a Metric, or a mapping of its fields (``ci=(lo, hi)`` accepted)."""
        if isinstance(obj, Metric):
            return obj
        if isinstance(obj, Mapping):
            kwargs = dict(obj)
            if "ci" in kwargs:
                lo, hi = kwargs.pop("ci")
                kwargs["ci_low"], kwargs["ci_high"] = lo, hi
            unknown = set(kwargs) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown metric fields {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
            if "value" not in kwargs:
                raise ValueError("a metric mapping needs a 'value'")
            return cls(**kwargs)
        if isinstance(obj, bool) or not isinstance(obj, (int, float)) and not hasattr(obj, "__float__"):
            raise ValueError(f"a metric must be a number, a Metric or a mapping, got {obj!r}")
        return cls(float(obj))


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs`` with its metrics."""

    key: str
    config: dict[str, Any]
    status: str
    metrics: dict[str, Metric]
    timings: dict[str, Any]
    versions: dict[str, str | None]
    git_revision: str | None
    error: str | None
    attempts: int
    created: float
    updated: float

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def get(self, path: str, default: Any = None) -> Any:
        """A config field by dotted path, e.g. ``"sampler_options.order"``."""
        return _lookup(self.config, path, default)


_MISSING = object()


def _lookup(config: Mapping[str, Any], path: str, default: Any = _MISSING) -> Any:
    node: Any = config
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return default
    return node


def _same(actual: Any, wanted: Any) -> bool:
    """Filter comparison: numbers numerically, command-line strings against any value's text form."""
    if isinstance(wanted, str) and not isinstance(actual, str):
        if isinstance(actual, bool) or actual is None:
            return wanted.lower() == json.dumps(actual)
        if isinstance(actual, (int, float)):
            try:
                return math.isclose(float(wanted), actual, rel_tol=1e-12, abs_tol=1e-12)
            except ValueError:
                return False
        return wanted == json.dumps(actual, sort_keys=True, separators=(",", ":"))
    if isinstance(actual, bool) or isinstance(wanted, bool):
        return actual is wanted
    if isinstance(actual, (int, float)) and isinstance(wanted, (int, float)):
        return math.isclose(actual, wanted, rel_tol=1e-12, abs_tol=1e-12)
    return _canonical(actual, "") == _canonical(wanted, "")


def matches(config: Mapping[str, Any], filters: Mapping[str, Any] | None) -> bool:
    """True if every ``path: value`` of ``filters`` holds in ``config`` (dotted paths; see ``_same``)."""
    for path, wanted in (filters or {}).items():
        actual = _lookup(config, path)
        if actual is _MISSING or not _same(actual, wanted):
            return False
    return True


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class RunOutcome:
    """What a ``compute_fn`` of :meth:`Store.run_once` may return instead of a plain metrics mapping."""

    metrics: Mapping[str, float | Metric | Mapping[str, Any]]
    timings: Mapping[str, Any] = field(default_factory=dict)


ComputeFn = Callable[[dict[str, Any]], "Mapping[str, float | Metric | Mapping[str, Any]] | RunOutcome"]


# ---------------------------------------------------------------------------------------------------------------------
# The store


class Store:
    """A results database at ``path`` (created if missing unless ``create=False``).

    Thread-safe within a process (one connection behind a lock) and safe across processes (SQLite
    locking, ``BEGIN IMMEDIATE`` writes, a busy timeout of ``timeout`` seconds).
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True, timeout: float = 60.0):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise FileNotFoundError(f"no results store at {self.path}")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            self._setup(timeout, create)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise StoreError(f"{self.path} is not a usable skiptune results store: {exc}") from None
        except BaseException:
            self._conn.close()
            raise

    def _setup(self, timeout: float, create: bool) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not create and "runs" not in tables:
            raise StoreError(f"{self.path} is not a skiptune results store (it has no runs table)")
        self._set_wal()
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        with self._write() as db:
            # statement by statement: executescript() would commit the transaction
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (name, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {row[0]}, newer than this skiptune's "
                                 f"{SCHEMA_VERSION}: upgrade skiptune")

    def _set_wal(self) -> None:
        # Switching to WAL needs a moment without other writers; retry while another process holds the lock.
        for attempt in range(200):
            try:
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"cannot use WAL journaling on {self.path} (got {mode!r}); use a local disk")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.05)

    # -- plumbing -----------------------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE`` takes the write lock up front (waiting up to the
        busy timeout), so the transaction never fails half-way on a lock upgrade."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- writing runs -------------------------------------------------------------------------------------------------

    def start_run(self, config: Mapping[str, Any]) -> str:
        """Mark a run ``pending`` (insert it, or count another attempt); a complete run is left as is."""
        key, text = config_key(config), canonical_json(config)
        env, now = environment(), time.time()
        with self._write() as db:
            db.execute(
                "INSERT INTO runs (key, config, status, skiptune_version, torch_version, python_version, git_revision,"
                " host, pid, attempts, created, updated) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET status = 'pending', attempts = runs.attempts + 1, error = NULL,"
                " host = excluded.host, pid = excluded.pid, updated = excluded.updated"
                " WHERE runs.status != 'complete'",
                (key, text, env["skiptune_version"], env["torch_version"], env["python_version"], env["git_revision"],
                 env["host"], os.getpid(), now, now))
        return key

    def record_run(self, config: Mapping[str, Any], metrics: Mapping[str, float | Metric | Mapping] | None = None, *,
                   timings: Mapping[str, Any] | None = None, status: str = "complete", error: str | None = None,
                   overwrite: bool = False) -> str:
        """Write a run and its metrics in one transaction; returns its key.

        ``status='complete'`` needs ``metrics`` (``{}`` for a run without metrics): the row becomes
        complete in the same transaction that writes them. An already complete run is left
        untouched (first writer wins) unless ``overwrite=True``, which replaces its metrics.
        """
        if status not in STATUSES:
            raise ValueError(f"run status must be one of {STATUSES}, got {status!r}")
        if status == "complete" and metrics is None:
            raise ValueError("a complete run needs its metrics (pass metrics={} for a run without any)")
        parsed = {str(name): Metric.coerce(m) for name, m in (metrics or {}).items()}
        key, text = config_key(config), canonical_json(config)
        env, now = environment(), time.time()
        timings_text = json.dumps(dict(timings or {}), sort_keys=True)
        with self._write() as db:
            row = db.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] == "complete" and not overwrite:
                return key
            db.execute(
                "INSERT INTO runs (key, config, status, skiptune_version, torch_version, python_version, git_revision,"
                " host, pid, timings, error, attempts, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET status = excluded.status,"
                " skiptune_version = excluded.skiptune_version,"
                " torch_version = excluded.torch_version, python_version = excluded.python_version,"
                " git_revision = excluded.git_revision, host = excluded.host, pid = excluded.pid,"
                " timings = excluded.timings, error = excluded.error, updated = excluded.updated",
                (key, text, status, env["skiptune_version"], env["torch_version"], env["python_version"],
                 env["git_revision"], env["host"], os.getpid(), timings_text, error, now, now))
            if metrics is not None:
                db.execute("DELETE FROM metrics WHERE run_key = ?", (key,))
                for name, m in parsed.items():
                    self._insert_metric(db, key, name, m, now)
        return key

    def complete_run(self, key: str, metrics: Mapping[str, float | Metric | Mapping], *,
                     timings: Mapping[str, Any] | None = None) -> bool:
        """pending/failed -> complete with ``metrics``, atomically. False if it was already complete."""
        parsed = {str(name): Metric.coerce(m) for name, m in metrics.items()}
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT status, timings FROM runs WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise StoreError(f"no run {key[:12]}... in {self.path}: start_run(config) first")
            if row[0] == "complete":
                return False
            merged = {**json.loads(row[1] or "{}"), **dict(timings or {})}
            db.execute("DELETE FROM metrics WHERE run_key = ?", (key,))
            for name, m in parsed.items():
                self._insert_metric(db, key, name, m, now)
            db.execute("UPDATE runs SET status = 'complete', error = NULL, timings = ?, updated = ? WHERE key = ?",
                       (json.dumps(merged, sort_keys=True), now, key))
        return True

    def fail_run(self, key: str, error: str) -> None:
        """Mark a run that raised as ``failed`` (kept for inspection; :meth:`run_once` retries it)."""
        with self._write() as db:
            db.execute("UPDATE runs SET status = 'failed', error = ?, updated = ?"
                       " WHERE key = ? AND status != 'complete'", (str(error), time.time(), key))

    def record_metric(self, key: str, name: str, value: float | Metric | Mapping[str, Any], *,
                      std: float | None = None, ci: tuple[float, float] | None = None, ci_level: float | None = None,
                      feature_net: str | None = None, feature_checksum: str | None = None,
                      n_samples: int | None = None, details: Mapping[str, Any] | None = None) -> None:
        """Add or replace one metric of an existing run (e.g. a new metric on samples already made)."""
        if isinstance(value, (Metric, Mapping)):
            m = Metric.coerce(value)
        else:
            m = Metric(float(value), std, *(ci or (None, None)), ci_level, feature_net, feature_checksum, n_samples,
                       dict(details or {}))
        with self._write() as db:
            if db.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone() is None:
                raise StoreError(f"no run {key[:12]}... in {self.path}: record the run before its metrics")
            db.execute("DELETE FROM metrics WHERE run_key = ? AND name = ?", (key, name))
            self._insert_metric(db, key, name, m, time.time())

    @staticmethod
    def _insert_metric(db: sqlite3.Connection, key: str, name: str, m: Metric, now: float) -> None:
        value = float(m.value)
        db.execute(
            "INSERT INTO metrics (run_key, name, value, std, ci_low, ci_high, ci_level, feature_net, feature_checksum,"
            " n_samples, details, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, name, None if math.isnan(value) else value, _float_or_none(m.std), _float_or_none(m.ci_low),
             _float_or_none(m.ci_high), _float_or_none(m.ci_level), m.feature_net, m.feature_checksum,
             None if m.n_samples is None else int(m.n_samples), json.dumps(dict(m.details), sort_keys=True), now))

    def run_once(self, config: Mapping[str, Any], compute_fn: ComputeFn, *, overwrite: bool = False) -> RunRecord:
        """The complete run for ``config``, computing it only if it is not in the store yet.

        Otherwise: mark it pending, call ``compute_fn(dict(config))`` (which returns a metrics
        mapping or a :class:`RunOutcome`), then write the metrics and mark it complete in one
        transaction, with ``timings['compute_s']``. If ``compute_fn`` raises, the run is marked
        failed and the exception propagates. A process killed inside ``compute_fn`` leaves the run
        pending; the next ``run_once`` recomputes it.
        """
        key = config_key(config)
        if not overwrite:
            existing = self.run(key)
            if existing is not None and existing.complete:
                return existing
        self.start_run(config)
        started = time.perf_counter()
        try:
            out = compute_fn(dict(config))
        except BaseException as exc:
            self.fail_run(key, f"{type(exc).__name__}: {exc}")
            raise
        elapsed = time.perf_counter() - started
        if isinstance(out, RunOutcome):
            metrics, timings = out.metrics, {"compute_s": elapsed, **dict(out.timings)}
        elif isinstance(out, Mapping):
            metrics, timings = out, {"compute_s": elapsed}
        else:
            raise ValueError(f"compute_fn must return a mapping of metrics or a RunOutcome, got {type(out).__name__}")
        if overwrite:
            self.record_run(config, metrics, timings=timings, overwrite=True)
        else:
            self.complete_run(key, metrics, timings=timings)
        record = self.run(key)
        assert record is not None
        return record

    # -- reading runs -------------------------------------------------------------------------------------------------

    _RUN_COLUMNS = ("key, config, status, skiptune_version, torch_version, python_version, git_revision, host, pid, "
                    "timings, error, attempts, created, updated")

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: all SELECTs inside see one consistent state of the database."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def _select_runs(self, where: str = "", params: Sequence[Any] = (),
                     filters: Mapping[str, Any] | None = None) -> list[RunRecord]:
        with self._snapshot() as db:
            rows = db.execute(f"SELECT {self._RUN_COLUMNS} FROM runs {where} ORDER BY created, key", params).fetchall()
            rows = [r for r in rows if matches(json.loads(r[1]), filters)]
            metrics: dict[str, dict[str, Metric]] = {r[0]: {} for r in rows}
            keys = list(metrics)
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for (run_key, name, value, std, lo, hi, level, net, checksum, n, details) in db.execute(
                        "SELECT run_key, name, value, std, ci_low, ci_high, ci_level, feature_net, feature_checksum, "
                        f"n_samples, details FROM metrics WHERE run_key IN ({marks}) ORDER BY name", chunk):
                    metrics[run_key][name] = Metric(math.nan if value is None else value, std, lo, hi, level, net,
                                                    checksum, n, json.loads(details or "{}"))
        out = []
        for (key, config, status, skv, tv, pv, git, host, pid, timings, error, attempts, created, updated) in rows:
            out.append(RunRecord(key=key, config=json.loads(config), status=status, metrics=metrics[key],
                                 timings=json.loads(timings or "{}"),
                                 versions={"skiptune": skv, "torch": tv, "python": pv, "host": host,
                                           "pid": None if pid is None else str(pid)},
                                 git_revision=git, error=error, attempts=attempts, created=created, updated=updated))
        return out

    def run(self, key: str) -> RunRecord | None:
        """The run with this key (any status), or None."""
        recs = self._select_runs("WHERE key = ?", (key,))
        return recs[0] if recs else None

    def has_run(self, key: str, *, status: str | None = "complete") -> bool:
        """Whether a run with this key exists (with this status; ``status=None``: any)."""
        if status is None:
            return bool(self._read("SELECT 1 FROM runs WHERE key = ?", (key,)))
        return bool(self._read("SELECT 1 FROM runs WHERE key = ? AND status = ?", (key, status)))

    def runs(self, filters: Mapping[str, Any] | None = None, *, status: str | None = None) -> list[RunRecord]:
        """Runs whose config matches every ``filters`` entry (dotted paths, e.g. ``{"sampler": "heun",
        "nfe": 9}``; strings also match numbers by value), oldest first; ``status`` restricts the status."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES} or None, got {status!r}")
        if status:
            return self._select_runs("WHERE status = ?", (status,), filters)
        return self._select_runs("", (), filters)

    def counts(self) -> dict[str, int]:
        """Number of runs per status and of metric rows."""
        out = dict.fromkeys(STATUSES, 0)
        out.update({s: n for s, n in self._read("SELECT status, COUNT(*) FROM runs GROUP BY status")})
        out["metrics"] = self._read("SELECT COUNT(*) FROM metrics")[0][0]
        return out

    # -- analyses -----------------------------------------------------------------------------------------------------

    def record_analysis(self, name: str, key: str, result: Any) -> None:
        """Store (or replace) the JSON result of analysis ``name`` for ``key``."""
        text = json.dumps(result, sort_keys=True, allow_nan=False)
        with self._write() as db:
            db.execute("INSERT INTO analyses (name, key, result, created) VALUES (?, ?, ?, ?) ON CONFLICT (name, key)"
                       " DO UPDATE SET result = excluded.result, created = excluded.created",
                       (name, key, text, time.time()))

    def analysis(self, name: str, key: str, default: Any = None) -> Any:
        rows = self._read("SELECT result FROM analyses WHERE name = ? AND key = ?", (name, key))
        return json.loads(rows[0][0]) if rows else default

    def analyses(self, name: str | None = None) -> list[tuple[str, str, Any]]:
        """``(name, key, result)`` of all analyses (of one name), ordered by name and key."""
        rows = self._read("SELECT name, key, result FROM analyses" + (" WHERE name = ?" if name else "")
                          + " ORDER BY name, key", (name,) if name else ())
        return [(n, k, json.loads(r)) for n, k, r in rows]

    # -- export -------------------------------------------------------------------------------------------------------

    def export_csv(self, path: str | os.PathLike, filters: Mapping[str, Any] | None = None, *,
                   status: str | None = "complete", metrics: Sequence[str] | None = None) -> int:
        """Write matching runs to CSV, one row per run; returns the number of rows.

        Columns: ``key, status``, every config field (nested fields flattened to dotted names,
        lists as JSON), then per metric ``NAME``, ``NAME_std``, ``NAME_ci_low``, ``NAME_ci_high``,
        ``NAME_n``, then versions, git revision, ``compute_s`` and the creation time (Unix seconds).
        """
        return write_csv(path, self.runs(filters, status=status), metrics)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become JSON text."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten_config(v, name + "."))
        elif isinstance(v, (list, tuple, Mapping)):
            out[name] = json.dumps(v, separators=(",", ":"))
        else:
            out[name] = v
    return out


def write_csv(path: str | os.PathLike, records: Sequence[RunRecord], metrics: Sequence[str] | None = None) -> int:
    """Write run records as CSV (see :meth:`Store.export_csv`)."""
    flat = [flatten_config(r.config) for r in records]
    config_cols = sorted({c for f in flat for c in f})
    names = list(metrics) if metrics is not None else sorted({m for r in records for m in r.metrics})
    header = ["key", "status", *config_cols]
    for m in names:
        header += [m, f"{m}_std", f"{m}_ci_low", f"{m}_ci_high", f"{m}_n"]
    header += ["skiptune_version", "torch_version", "python_version", "git_revision", "compute_s", "created"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r, f in zip(records, flat, strict=True):
            row: list[Any] = [r.key, r.status, *(f.get(c, "") for c in config_cols)]
            for m in names:
                x = r.metrics.get(m)
                row += ["", "", "", "", ""] if x is None else [
                    repr(x.value), *("" if v is None else repr(v) for v in (x.std, x.ci_low, x.ci_high)),
                    "" if x.n_samples is None else x.n_samples]
            row += [r.versions["skiptune"] or "", r.versions["torch"] or "", r.versions["python"] or "",
                    r.git_revision or "", r.timings.get("compute_s", ""), f"{r.created:.3f}"]
            writer.writerow(row)
    return len(records)
