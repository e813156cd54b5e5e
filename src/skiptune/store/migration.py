"""Schema 1 -> 2, in the caller's write transaction (all or nothing).

Schema 1 kept finished analyses and analysis units in a second table (``analyses``: name, key,
result) and keyed runs by configs that spelled one point in several ways (``none``, ``const:1`` and
``layer:1:1``; a compare-training run's model as a dict). Schema 2 keeps everything as runs. The
migration

1. adds the ``result`` and ``context`` columns to ``runs``;
2. turns every finished analysis into a run ``{"kind": "analysis", "analysis": NAME, "config": ...}``
   holding its result (the stored result carries its config). Analysis *units* (cached intermediate
   values, ``unit:*`` rows) are dropped: schema 1 did not keep their configs, so they cannot be
   keyed again; each is recomputed once, when an analysis first needs it;
3. re-keys every run with ``migrate(config)`` (the experiment layer's normaliser). Runs that become
   the same point are merged: a complete run wins over an unfinished one, the older over the newer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from skiptune.store.keys import canonical_json, config_key

_COPY = ("status, skiptune_version, torch_version, python_version, git_revision, host, pid, timings, error, attempts,"
         " created, updated, result, context")


def migrate_v1(db: sqlite3.Connection, migrate: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    columns = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
    if "result" not in columns:
        db.execute("ALTER TABLE runs ADD COLUMN result TEXT")
    if "context" not in columns:
        db.execute("ALTER TABLE runs ADD COLUMN context TEXT NOT NULL DEFAULT '{}'")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "analyses" in tables:
        for name, result, created in db.execute("SELECT name, result, created FROM analyses ORDER BY created, key"
                                                ).fetchall():
            if name.startswith("unit:"):
                continue
            payload = json.loads(result)
            config = {"kind": "analysis", "analysis": name, "config": payload.get("config", payload.get("spec", {}))}
            db.execute("INSERT OR IGNORE INTO runs (key, config, status, timings, attempts, created, updated, result)"
                       " VALUES (?, ?, 'complete', '{}', 1, ?, ?, ?)",
                       (config_key(config), canonical_json(config), created, created, result))
        db.execute("DROP TABLE analyses")
    rows = db.execute("SELECT key, config, status FROM runs ORDER BY created, key").fetchall()
    for key, text, status in rows:
        new = migrate(json.loads(text))
        new_key = config_key(new)
        if new_key == key:
            continue
        taken = db.execute("SELECT status FROM runs WHERE key = ?", (new_key,)).fetchone()
        if taken is not None:
            if taken[0] == "complete" or status != "complete":
                db.execute("DELETE FROM runs WHERE key = ?", (key,))  # the same point is stored already
                continue
            db.execute("DELETE FROM runs WHERE key = ?", (new_key,))  # an unfinished copy yields to a complete one
        db.execute(f"INSERT INTO runs (key, config, {_COPY}) SELECT ?, ?, {_COPY} FROM runs WHERE key = ?",
                   (new_key, canonical_json(new), key))
        db.execute("UPDATE metrics SET run_key = ? WHERE run_key = ?", (new_key, key))
        db.execute("DELETE FROM runs WHERE key = ?", (key,))
