"""Stored runs as CSV: one row per run, config fields flattened to dotted columns. Standard library only."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skiptune.store.records import RunRecord


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
