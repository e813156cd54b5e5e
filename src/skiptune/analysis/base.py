"""Shared shape of the paper's analyses (seed 003, Sec. 4 and the appendices).

Every analysis ``NAME`` has three parts, one per layer:

- ``skiptune.analysis.<name>``: the library: ``NAME``, ``HELP`` and ``run_<name>(net, ...) ->
  AnalysisResult`` (no argument parsing, no plotting);
- ``skiptune.report.analyses.<name>``: ``plot(result, path)``, the figure drawn from a stored result
  alone (so ``skiptune report`` can redraw it);
- ``skiptune.cli.analyses.<name>``: ``add_arguments(parser)`` and ``run(args, ctx) -> AnalysisResult``
  for ``skiptune analyze <name>``.

Results are plain tables (a list of row dicts) plus a few headline numbers, so that one writer
(:func:`skiptune.report.tables.write_result`) produces JSON, CSV, markdown and the figure for all of
them. Long analyses are split into units (one rho, one window, one sigma, ...) stored as runs of the
results store with :func:`cached` (:mod:`skiptune.experiment.results`), so an interrupted run resumes
where it stopped and a rerun recomputes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from skiptune.experiment import results
from skiptune.experiment.results import cached
from skiptune.store import Store, config_key

__all__ = ["AnalysisResult", "cached", "record_result", "stored_results"]


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


def record_result(store: Store | None, result: AnalysisResult) -> None:
    """Keep the finished result in the store (``skiptune report`` reads it back)."""
    results.record_result(store, result.name, result.config, result.to_dict())


def stored_results(store: Store, name: str | None = None) -> list[AnalysisResult]:
    """All finished analysis results (of one name) in the store, oldest first."""
    return [AnalysisResult.from_dict(r) for r in results.stored_results(store, name)]
