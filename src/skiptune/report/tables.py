"""An analysis result as files: JSON, CSV, a markdown table and (with a plot function) its figure."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from skiptune.analysis.base import AnalysisResult


def markdown(result: AnalysisResult, digits: int = 4) -> str:
    """The table as GitHub markdown."""
    cols = result.columns()
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in result.rows:
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
    md = [f"## {result.name}", "", markdown(result), ""]
    if result.summary:
        md += ["", *[f"- {k}: {_fmt(v, 4)}" for k, v in result.summary.items()], ""]
    md += [f"- {n}" for n in result.notes]
    if plot is not None:
        paths["png"] = out / f"{result.name}.png"
        plot(result, paths["png"])
        md += ["", f"![{result.name}]({paths['png'].name})"]
    paths["md"].write_text("\n".join(md) + "\n")
    return paths


def sweep_summary(rows: Sequence, diffs: Mapping, seed_sets: int) -> str:
    """A sweep as text: each rule's FID and its paired difference to the untouched network, then the best
    rule per (sampler, NFE)."""
    from skiptune.runs.sweep import best_rows

    lines = [f"{'sampler':<8} {'NFE':>4} {'rule':<22} FID (mean, 95% CI over {seed_sets} seed sets); "
             "rule - none, paired over the same seed sets"]
    for r in rows:
        diff = diffs.get((r.sampler, r.nfe, r.rule))
        lines.append(f"{r.sampler:<8} {r.nfe:>4} {r.rule:<22} {r.estimate}" + (f";  {diff}" if diff else ""))
    lines.append("")
    for (s, n), (best, base) in best_rows(rows).items():
        lines.append(f"{s} NFE {n}: best {best.rule} {best.estimate}" + (f"; baseline {base.estimate}" if base else ""))
    return "\n".join(lines)


def write_sweep_csv(rows: Sequence, diffs: Mapping, path: str | Path) -> Path:
    """One line per (sampler, NFE, rule): FID mean and interval, the paired difference to the untouched
    network and its interval (empty without one), and the per-seed-set values."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sampler", "nfe", "rule", "fid_mean", "ci_low", "ci_high", "diff_mean", "diff_ci_low",
                    "diff_ci_high", "values"])
        for r in rows:
            e, diff = r.estimate, diffs.get((r.sampler, r.nfe, r.rule))
            paired = ["", "", ""] if diff is None else [diff.mean, diff.ci_low, diff.ci_high]
            w.writerow([r.sampler, r.nfe, r.rule, e.mean, e.ci_low, e.ci_high, *paired, " ".join(map(str, e.values))])
    return path
