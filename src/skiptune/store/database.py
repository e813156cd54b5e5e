"""The results database: every run (a generated and scored sample set, an analysis unit, a finished
analysis), keyed by :func:`~skiptune.store.keys.config_key` of its config, in SQLite.

One row per run in ``runs`` (config, status, optional JSON ``result`` payload, ``context``, versions,
timings); one row per (run, metric name) in ``metrics``.

Crash safety and concurrency (the store is written by sweeps that may be killed at any point, and
by several processes at once):

- WAL journal, ``synchronous=FULL``; every write is one ``BEGIN IMMEDIATE`` ... ``COMMIT``
  transaction, so a process killed with SIGKILL leaves either the whole record or none of it.
- One write path per run state: :meth:`Store.start_run` (pending), :meth:`Store.complete_run`
  (complete: metrics, result and status in the same transaction), :meth:`Store.fail_run` (failed).
  A run killed mid-computation stays ``pending`` and is recomputed by :meth:`Store.run_once`.
- Primary keys make every write an upsert: restarting a sweep, or two processes finishing the same
  run, never duplicates a row; the first commit of a complete run wins.
- Every connection waits up to ``timeout`` seconds for the write lock (SQLite busy handler).
  WAL needs a local file system (not NFS).

Schema versions: 1 (until the experiment layer) kept analysis results in a second table and spelled
some identical points differently; 2 stores everything as runs. A version-1 store is migrated in
place, in one transaction, when opened with a ``migrate`` function (the experiment layer's
:func:`skiptune.experiment.open_store` passes it). Standard library only.

Example::

    store = Store("results.sqlite")
    config = {"model": sha, "rule": "layer:0.7:1", "sampler": "heun", "nfe": 9, "seeds": "0-1999"}
    record = store.run_once(config, lambda cfg: {"fid": compute_fid(cfg)})
    record.metrics["fid"].value
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from skiptune.core.errors import InputError, MissingFileError, StoreError
from skiptune.core.provenance import environment
from skiptune.store.export import write_csv
from skiptune.store.filters import matches
from skiptune.store.keys import canonical_json, config_key
from skiptune.store.records import ComputeFn, Metric, RunOutcome, RunRecord

SCHEMA_VERSION = 2
STATUSES = ("pending", "complete", "failed")
#: a migration step: the config of a run written by the previous schema -> its config now
Migrate = Callable[[dict[str, Any]], dict[str, Any]]

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
    updated REAL NOT NULL,
    result TEXT,
    context TEXT NOT NULL DEFAULT '{}'
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
"""

_RUN_COLUMNS = ("key, config, status, skiptune_version, torch_version, python_version, git_revision, host, pid, "
                "timings, error, attempts, created, updated, result, context")


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=False)


def _access_problem(path: Path) -> str | None:
    """Why this process may not write the store at ``path`` (the file, or the folder where SQLite keeps its
    ``-wal`` and ``-shm`` files next to it), as far as permissions tell; None if they allow it (or for root)."""
    if path.exists() and not os.access(path, os.W_OK):
        return f"the file {path} is read-only"
    folder = path.parent
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        return (f"the folder {folder} is read-only (SQLite writes {path.name}-wal and {path.name}-shm next to "
                "the store)")
    return None


def check_new_store(path: str | os.PathLike) -> None:
    """Fail now, with a :class:`StoreError`, if no results store can be created at ``path``, which does not exist
    yet; nothing is created. (An existing store is checked by opening it.)"""
    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StoreError(f"cannot create the results store {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create the results store {path}: the folder {ancestor} is read-only; pass "
                         "another results store (--db)")


class Store:
    """A results database at ``path`` (created if missing unless ``create=False``).

    Thread-safe within a process (one connection behind a lock) and safe across processes (SQLite
    locking, ``BEGIN IMMEDIATE`` writes, a busy timeout of ``timeout`` seconds). ``migrate`` upgrades
    a store written by an older schema (see the module doc); without it such a store is refused with
    a message saying how to open it.
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True, timeout: float = 60.0,
                 migrate: Migrate | None = None):
        self.path = Path(path)
        self.timeout = timeout
        if not create and not self.path.exists():
            raise MissingFileError(f"no results store at {self.path}")
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory: give the path of a results store file (.sqlite)")
        if create and not self.path.exists():
            check_new_store(self.path)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the results store {self.path}: cannot create its folder "
                                 f"{self.path.parent} ({exc.strerror or exc})") from None
        if self.path.exists() and not os.access(self.path, os.W_OK):  # before SQLite leaves -wal/-shm files
            raise StoreError(f"the file {self.path} is read-only: make it writable, or pass another results store "
                             "(--db)")
        self._lock = threading.RLock()
        sidecars = [self.path.with_name(self.path.name + s) for s in ("-wal", "-shm")]
        new_sidecars = [f for f in sidecars if not f.exists()]
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._failure(exc) from None
        try:
            self._setup(timeout, create, migrate)
        except BaseException as exc:
            self._conn.close()
            for f in new_sidecars:  # what this failed open created (a read-only connection leaves them behind)
                if f.exists():
                    try:
                        f.unlink()
                    except OSError:
                        pass
            if isinstance(exc, sqlite3.Error):
                raise self._failure(exc) from None
            raise

    def _failure(self, exc: sqlite3.Error) -> StoreError:
        """A :class:`StoreError` that says what an SQLite error means for this store and what to do."""
        text = str(exc)
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            return StoreError(f"{self.path} stayed locked by another process for {self.timeout:g} s")
        if "readonly" in lowered or "read-only" in lowered:
            where = _access_problem(self.path) or f"{self.path} is read-only"
            return StoreError(f"{where}: make it writable, or pass another results store (--db)")
        if "malformed" in lowered or "not a database" in lowered or "encrypted" in lowered:
            return StoreError(f"{self.path} is corrupt or not a results store (SQLite: {text}); restore it from a "
                              "backup or pass another results store (--db)")
        if "unable to open" in lowered or "i/o error" in lowered or "disk is full" in lowered:
            where = _access_problem(self.path)
            return StoreError(f"cannot use the results store {self.path}: " + (where or f"SQLite: {text}") +
                              ("" if where else " (is the disk full, or the folder read-only?)"))
        return StoreError(f"{self.path} is not a usable skiptune results store: {text}")

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """SQLite failures while reading or writing (a store corrupted after it was opened, a full disk, a lock
        held too long, ...) as :class:`StoreError`; constraint and programming errors stay bugs."""
        try:
            yield
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise
        except sqlite3.Error as exc:
            raise self._failure(exc) from None

    def _setup(self, timeout: float, create: bool, migrate: Migrate | None) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not create and "runs" not in tables:
            raise StoreError(f"{self.path} is not a skiptune results store (it has no runs table)")
        version = None
        if "meta" in tables:
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            version = int(row[0]) if row else None
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, newer than this skiptune's "
                             f"{SCHEMA_VERSION}: upgrade skiptune")
        if version is not None and version < SCHEMA_VERSION and migrate is None:
            raise StoreError(f"{self.path} was written by an older skiptune (schema {version}); open it with "
                             "skiptune.experiment.open_store() or any skiptune command, which migrate it in place")
        self._set_wal()
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        with self._write() as db:
            if version is not None and version < SCHEMA_VERSION:
                assert migrate is not None
                from skiptune.store.migration import migrate_v1

                migrate_v1(db, migrate)
            # statement by statement: executescript() would commit the transaction
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            # a no-op on a store of this version: opening a store does not change its file
            db.execute("INSERT INTO meta (name, value) VALUES ('schema_version', ?) ON CONFLICT (name) DO UPDATE"
                       " SET value = excluded.value WHERE value != excluded.value", (str(SCHEMA_VERSION),))

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

    def verify(self) -> None:
        """Read the whole store (SQLite's ``quick_check``): a damaged store is a :class:`StoreError` now, before any
        work, rather than in the middle of a sweep when a damaged page is first read."""
        lines = [line.strip() for r in self._read("PRAGMA quick_check(3)") for line in str(r[0]).splitlines()]
        problems = [line for line in lines if line and line.lower() != "ok" and not line.startswith("***")]
        if problems:
            raise StoreError(f"{self.path} is corrupt (SQLite quick_check: {'; '.join(problems)}); restore it from a "
                             "backup or pass another results store (--db)")

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
        with self._lock, self._sqlite_errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error says more; SQLite rolls back on close anyway
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock, self._sqlite_errors():
            return self._conn.execute(sql, params).fetchall()

    # -- writing runs: one path per state -----------------------------------------------------------------------------

    @staticmethod
    def _upsert(db: sqlite3.Connection, key: str, text: str, status: str, context: Mapping[str, Any] | None,
                now: float) -> None:
        """Insert the run row with ``status`` (or, for an existing row, set the status and provenance)."""
        env = environment()
        db.execute(
            "INSERT INTO runs (key, config, status, skiptune_version, torch_version, python_version, git_revision,"
            " host, pid, attempts, created, updated, context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET status = excluded.status, skiptune_version = excluded.skiptune_version,"
            " torch_version = excluded.torch_version, python_version = excluded.python_version,"
            " git_revision = excluded.git_revision, host = excluded.host, pid = excluded.pid,"
            " updated = excluded.updated, context = excluded.context,"
            " attempts = runs.attempts + (excluded.status = 'pending'), error = NULL",
            (key, text, status, env["skiptune"], env["torch"], env["python"], env["git_revision"], env["host"],
             os.getpid(), now, now, _json(dict(context or {}))))

    def start_run(self, config: Mapping[str, Any], *, context: Mapping[str, Any] | None = None) -> str:
        """Mark a run ``pending`` (insert it, or count another attempt); a complete run is left as is."""
        key, text = config_key(config), canonical_json(config)
        with self._write() as db:
            row = db.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
            if row is None or row[0] != "complete":
                self._upsert(db, key, text, "pending", context, time.time())
        return key

    def complete_run(self, config: Mapping[str, Any], metrics: Mapping[str, float | Metric | Mapping], *,
                     timings: Mapping[str, Any] | None = None, result: Any = None,
                     context: Mapping[str, Any] | None = None, overwrite: bool = False) -> bool:
        """Make the run of ``config`` complete with ``metrics`` (``{}`` for none) and ``result``, atomically.

        Inserts the run if it is not stored yet. Returns False, writing nothing, if it was already
        complete (the first writer wins) unless ``overwrite`` replaces its metrics and result.
        """
        if metrics is None:
            raise InputError("a complete run needs its metrics (pass metrics={} for a run without any)")
        parsed = {str(name): Metric.coerce(m) for name, m in metrics.items()}
        key, text = config_key(config), canonical_json(config)
        result_text = None if result is None else _json(result)
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT status, timings FROM runs WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] == "complete" and not overwrite:
                return False
            merged = {**(json.loads(row[1] or "{}") if row else {}), **dict(timings or {})}
            self._upsert(db, key, text, "complete", context, now)
            db.execute("UPDATE runs SET timings = ?, result = ? WHERE key = ?", (_json(merged), result_text, key))
            db.execute("DELETE FROM metrics WHERE run_key = ?", (key,))
            for name, m in parsed.items():
                self._insert_metric(db, key, name, m, now)
        return True

    def fail_run(self, key: str, error: str) -> None:
        """Mark a run that raised as ``failed`` (kept for inspection; :meth:`run_once` retries it)."""
        with self._write() as db:
            db.execute("UPDATE runs SET status = 'failed', error = ?, updated = ?"
                       " WHERE key = ? AND status != 'complete'", (str(error), time.time(), key))

    def record_metric(self, key: str, name: str, value: float | Metric | Mapping[str, Any], *,
                      n_samples: int | None = None) -> None:
        """Add or replace one metric of an existing run (e.g. a new metric on samples already made)."""
        m = Metric.coerce(value)
        if n_samples is not None:
            m = Metric(**{**m.__dict__, "n_samples": n_samples})
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
        mapping or a :class:`RunOutcome`), then write the metrics (and result) and mark it complete
        in one transaction, with ``timings['compute_s']``. If ``compute_fn`` raises, the run is
        marked failed and the exception propagates. A process killed inside ``compute_fn`` leaves
        the run pending; the next ``run_once`` recomputes it.
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
        if isinstance(out, Mapping):
            out = RunOutcome(out)
        if not isinstance(out, RunOutcome):
            raise InputError(f"compute_fn must return a mapping of metrics or a RunOutcome, got {type(out).__name__}")
        self.complete_run(config, out.metrics, timings={"compute_s": elapsed, **dict(out.timings)}, result=out.result,
                          context=out.context, overwrite=overwrite)
        record = self.run(key)
        assert record is not None
        return record

    # -- reading runs -------------------------------------------------------------------------------------------------

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: all SELECTs inside see one consistent state of the database."""
        with self._lock, self._sqlite_errors():
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    def _select_runs(self, where: str = "", params: Sequence[Any] = (),
                     filters: Mapping[str, Any] | None = None) -> list[RunRecord]:
        with self._snapshot() as db:
            rows = db.execute(f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY created, key", params).fetchall()
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
        for (key, config, status, skv, tv, pv, git, host, pid, timings, error, attempts, created, updated, result,
             context) in rows:
            out.append(RunRecord(key=key, config=json.loads(config), status=status, metrics=metrics[key],
                                 timings=json.loads(timings or "{}"),
                                 versions={"skiptune": skv, "torch": tv, "python": pv, "host": host,
                                           "pid": None if pid is None else str(pid)},
                                 git_revision=git, error=error, attempts=attempts, created=created, updated=updated,
                                 result=None if result is None else json.loads(result),
                                 context=json.loads(context or "{}")))
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
            raise InputError(f"status must be one of {STATUSES} or None, got {status!r}")
        if status:
            return self._select_runs("WHERE status = ?", (status,), filters)
        return self._select_runs("", (), filters)

    def counts(self) -> dict[str, int]:
        """Number of runs per status and of metric rows."""
        out = dict.fromkeys(STATUSES, 0)
        out.update({s: n for s, n in self._read("SELECT status, COUNT(*) FROM runs GROUP BY status")})
        out["metrics"] = self._read("SELECT COUNT(*) FROM metrics")[0][0]
        return out

    def export_csv(self, path: str | os.PathLike, filters: Mapping[str, Any] | None = None, *,
                   status: str | None = "complete", metrics: Sequence[str] | None = None) -> int:
        """Write matching runs to CSV (see :func:`skiptune.store.export.write_csv`); returns the number of rows."""
        return write_csv(path, self.runs(filters, status=status), metrics)
