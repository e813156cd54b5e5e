"""Shared shape of the paper's analyses (seed 003, Sec. 4 and the appendices).

Every analysis is one module ``skiptune.analysis.<name>`` with

- ``run_<name>(net, ..., store=None, progress=False) -> AnalysisResult``: the library function;
- ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``from_args(args, ctx) -> AnalysisResult`` for
  ``skiptune analyze <name>``;
- ``plot(result, path)``: the figure, drawn from a stored result alone (so ``skiptune report`` can
  redraw it).

Results are plain tables (a list of row dicts) plus a few headline numbers, so that one writer
produces JSON, CSV, a markdown table and a plot for all of them. Long analyses are split into units
(one rho, one window, one sigma, ...) stored as runs of the results store with :func:`cached`
(:mod:`skiptune.experiment.results`), so an interrupted run resumes where it stopped and a rerun
recomputes nothing.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from skiptune.experiment import results
from skiptune.experiment.results import cached
from skiptune.store import Store, config_key

__all__ = ["AnalysisResult", "cached", "record_result", "stored_results", "write_result"]


@dataclass
class AnalysisResult:
    """One analysis run: what was computed (``config``), the table (``rows``) and headline numbers.

    ``config`` holds everything that determines the numbers (model checksum, rules, samplers, seeds,
    sample counts, sigma values); ``notes`` state estimators and caveats in words for the report.
    """

    name: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``columns`` and ``summary_keys`` keep the orders that a sorted-key JSON store loses."""
        return {**asdict(self), "columns": self.columns(), "summary_keys": list(self.summary)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisResult:
        cols = list(data.get("columns", []))
        rows = [{**{c: r[c] for c in cols if c in r}, **r} for r in data["rows"]]
        summary = dict(data.get("summary", {}))
        summary = {**{k: summary[k] for k in data.get("summary_keys", []) if k in summary}, **summary}
        return cls(name=data["name"], config=dict(data["config"]), rows=rows, summary=summary,
                   notes=list(data.get("notes", [])))

    @property
    def key(self) -> str:
        return config_key({"analysis": self.name, **self.config})

    def columns(self) -> list[str]:
        cols: dict[str, None] = {}
        for r in self.rows:
            cols.update(dict.fromkeys(r))
        return list(cols)

    def markdown(self, digits: int = 4) -> str:
        """The table as GitHub markdown."""
        cols = self.columns()
        lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        for r in self.rows:
            lines.append("| " + " | ".join(_fmt(r.get(c, ""), digits) for c in cols) + " |")
        return "\n".join(lines)


def _fmt(value: Any, digits: int) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}"
    return str(value)


def write_result(result: AnalysisResult, out: str | Path, plot: Callable[[AnalysisResult, Path], Any] | None = None,
                 ) -> dict[str, Path]:
    """Write ``<out>/<name>.json``, ``.csv``, ``.md`` and (with ``plot``) ``.png``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{result.name}.json", "csv": out / f"{result.name}.csv", "md": out / f"{result.name}.md"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2, sort_keys=False, allow_nan=True) + "\n")
    cols = result.columns()
    with open(paths["csv"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in result.rows:
            w.writerow([r.get(c, "") for c in cols])
    md = [f"## {result.name}", "", result.markdown(), ""]
    if result.summary:
        md += ["", *[f"- {k}: {_fmt(v, 4)}" for k, v in result.summary.items()], ""]
    md += [f"- {n}" for n in result.notes]
    if plot is not None:
        paths["png"] = out / f"{result.name}.png"
        plot(result, paths["png"])
        md += ["", f"![{result.name}]({paths['png'].name})"]
    paths["md"].write_text("\n".join(md) + "\n")
    return paths


def record_result(store: Store | None, result: AnalysisResult) -> None:
    """Keep the finished result in the store (``skiptune report`` reads it back)."""
    results.record_result(store, result.name, result.config, result.to_dict())


def stored_results(store: Store, name: str | None = None) -> list[AnalysisResult]:
    """All finished analysis results (of one name) in the store, oldest first."""
    return [AnalysisResult.from_dict(r) for r in results.stored_results(store, name)]
