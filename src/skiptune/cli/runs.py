"""``skiptune runs``: list the runs of a results store with their metrics, filter them, export CSV."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from skiptune.cli import UsageError


def register(sub) -> None:
    p = sub.add_parser("runs", help="list, filter and export the runs of a results store",
                       description="List the runs recorded in a results store (SQLite) with their metrics. "
                                   "Config fields shared by all listed runs are printed once above the table; "
                                   "fields that differ get a column.")
    p.add_argument("--db", default="runs/results.sqlite", metavar="PATH",
                   help="results store (SQLite file; default runs/results.sqlite, as for sweep, search and analyze)")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="keep runs whose config field KEY (dotted for nested fields, e.g. sampler_options.order) "
                        "equals VALUE; numbers compare by value, rules by meaning (layer:0.7 = layer:0.7:1); "
                        "repeatable")
    p.add_argument("--status", choices=["complete", "pending", "failed", "all"], default="all",
                   help="runs of this status only (default: all)")
    p.add_argument("--metric", action="append", default=None, metavar="NAME",
                   help="show (and export) only this metric; repeatable (default: all metrics)")
    p.add_argument("--sort", metavar="FIELD", help="sort by a metric name or config field (default: creation time)")
    p.add_argument("--csv", metavar="OUT", help="also write the listed runs to this CSV file")
    p.add_argument("--json", action="store_true", help="print the runs as JSON instead of a table")
    p.set_defaults(func=run)


def parse_filters(items: list[str]) -> dict[str, str]:
    """``["sampler=heun", "nfe=9"]`` -> ``{"sampler": "heun", "nfe": "9"}`` (values stay text)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--filter needs KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _canonical_rule(text: Any) -> str | None:
    from skiptune.skip import canonical_rule

    try:
        return str(canonical_rule(str(text)))
    except ValueError:
        return None


def _fields(records: list) -> set[str]:
    """Every config field of ``records`` as ``--filter``/``--sort`` name it (dotted paths, and their prefixes)."""
    from skiptune.store import flatten_config

    out: set[str] = set()
    for r in records:
        for name in flatten_config(r.config):
            parts = name.split(".")
            out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def _listing(names: set[str], limit: int = 30) -> str:
    shown = sorted(names)
    return ", ".join(shown[:limit]) + (f", ... ({len(shown) - limit} more)" if len(shown) > limit else "") \
        if shown else "none"


def check_names(records: list, filters: dict[str, str], metrics: list[str] | None, sort: str | None,
                db: str) -> None:
    """A ``--filter`` field, ``--metric`` or ``--sort`` key that occurs in no run of the store is a typo, not an empty
    result: refuse it, listing the fields and metrics that do occur."""
    if not records:
        return
    fields = _fields(records)
    metric_names = {m for r in records for m in r.metrics}
    for key in filters:
        if key not in fields:
            raise UsageError(f"--filter {key}=...: no run in {db} has a config field {key!r}; "
                             f"the fields are: {_listing(fields)}")
    for name in metrics or ():
        if name not in metric_names:
            raise UsageError(f"--metric {name}: no run in {db} has a metric {name!r}; "
                             f"the metrics are: {_listing(metric_names)}")
    if sort is not None and sort not in metric_names and sort not in fields:
        raise UsageError(f"--sort {sort}: no run in {db} has a metric or config field {sort!r}; "
                         f"the metrics are: {_listing(metric_names)}; the fields are: {_listing(fields)}")


def select(store, filters: dict[str, str], status: str | None) -> list:
    """Runs of ``store`` matching ``filters``; a ``rule`` filter compares parsed rules."""
    filters = dict(filters)
    rule = filters.pop("rule", None)
    records = store.runs(filters, status=status)
    if rule is not None:
        wanted = _canonical_rule(rule) or rule
        records = [r for r in records if "rule" in r.config
                   and (str(r.config["rule"]) == rule or _canonical_rule(r.config["rule"]) == wanted)]
    return records


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _metric_text(m) -> str:
    if m is None:
        return ""
    text = f"{m.value:.4g}"
    if m.ci_low is not None and m.ci_high is not None:
        text += f" ±{(m.ci_high - m.ci_low) / 2:.2g}"
    elif m.std is not None:
        text += f" (sd {m.std:.2g})"
    return text


def _sort_key(record, field: str) -> tuple:
    if field in record.metrics:
        v = record.metrics[field].value
        return (0, v if not math.isnan(v) else math.inf, "")
    v = record.get(field)
    if v is None:
        return (2, 0.0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, _text(v))


def table(records: list, metrics: list[str] | None) -> str:
    """The listing: shared config fields once, then one row per run."""
    from skiptune.store import flatten_config

    flat = [flatten_config(r.config) for r in records]
    fields = sorted({f for row in flat for f in row})
    shared = {f: flat[0][f] for f in fields
              if all(f in row for row in flat) and len({_text(row[f]) for row in flat}) == 1}
    varying = [f for f in fields if f not in shared]
    if "rule" in varying:  # the rule first: it is what a sweep varies
        varying.remove("rule")
        varying.insert(0, "rule")
    names = metrics if metrics is not None else sorted({m for r in records for m in r.metrics})
    header = ["key", "status", *varying, *names]
    body = [[r.key[:12], r.status, *(_text(row.get(f, "")) for f in varying),
             *(_metric_text(r.metrics.get(m)) for m in names)] for r, row in zip(records, flat, strict=True)]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
    lines = []
    if shared:
        lines.append("common: " + "  ".join(f"{k}={_text(v)}" for k, v in shared.items()))
        lines.append("")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in body]
    return "\n".join(lines)


def run(args) -> int:
    from skiptune.experiment import open_store
    from skiptune.io.outputs import atomic_file, check_output_file
    from skiptune.store import write_csv

    filters = parse_filters(args.filter)
    status = None if args.status == "all" else args.status
    if args.csv:
        check_output_file(args.csv, "--csv", inputs={"--db": args.db})
    with open_store(args.db, create=False) as store:
        if filters or args.metric or args.sort:
            check_names(store.runs(), filters, args.metric, args.sort, args.db)
        records = select(store, filters, status)
    if args.sort:
        records.sort(key=lambda r: _sort_key(r, args.sort))
    if args.json:
        print(json.dumps([{"key": r.key, "status": r.status, "config": r.config,
                           "metrics": {k: {"value": m.value, "std": m.std, "ci": [m.ci_low, m.ci_high],
                                           "n_samples": m.n_samples, "feature_net": m.feature_net}
                                       for k, m in r.metrics.items() if not args.metric or k in args.metric},
                           "timings": r.timings, "versions": r.versions, "git_revision": r.git_revision}
                          for r in records], indent=2, allow_nan=True))
    elif records:
        print(table(records, args.metric))
    else:
        print("no runs match")
    if args.csv:
        with atomic_file(args.csv, "--csv") as tmp:  # a complete file or the one there before
            n = write_csv(tmp, records, args.metric)
        print(f"wrote {n} runs to {args.csv}", file=sys.stderr if args.json else sys.stdout)
    return 0
