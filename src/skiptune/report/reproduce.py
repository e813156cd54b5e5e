"""The report of ``skiptune reproduce``: the paper's FID beside the measured one, as markdown, CSV and a plot."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

from skiptune.core.stats import Estimate
from skiptune.runs.reproduce import PlanRow, Row, RowResult


def _fid(e: Estimate | None) -> str:
    if e is None:
        return "-"
    if len(e.values) < 2 or not math.isfinite(e.half_width):
        return f"{e.mean:.3f}"
    return f"{e.mean:.3f} +- {e.half_width:.3f}"


def _paper(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def _status(r: RowResult, family: str | None) -> str:
    if r.row.needs:
        return f"needs {r.row.needs}"
    if r.row.family != family:
        return f"needs a {r.row.family} checkpoint ({r.row.fam.checkpoint})"
    return "measured"


def _delta(measured: Estimate | None, paper: float | None) -> str:
    return "-" if measured is None or paper is None else f"{measured.mean - paper:+.3f}"


def markdown(table: str, results: Sequence[RowResult], family: str | None, *, header: Sequence[str] = ()) -> str:
    """One line per row: the paper's untuned and tuned FID, the measured ones (mean +- 95% interval over seed
    sets when there are several), the paired tuned - untuned difference, and measured minus paper."""
    lines = [f"# Seed 003, Table {table}: paper vs measured", "", *header, "",
             "| row | sampler | NFE | rule | paper untuned | measured untuned | untuned - paper | paper tuned | "
             "measured tuned | tuned - paper | tuned - untuned (paired) | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes = []
    for r in results:
        row = r.row
        nfe = r.nfe if r.nfe is not None else row.nfe
        diff = r.difference
        mark = " (interpreted)" if row.interpreted else ""
        lines.append(f"| {row.name}{mark} | {row.sampler or '-'} | {nfe if nfe is not None else '-'} | {row.rule} | "
                     f"{_paper(row.paper_baseline)} | {_fid(r.baseline)} | {_delta(r.baseline, row.paper_baseline)} | "
                     f"{_paper(row.paper_tuned)} | {_fid(r.tuned)} | {_delta(r.tuned, row.paper_tuned)} | "
                     f"{_fid(diff) if diff is not None else '-'} | {_status(r, family)} |")
        if row.note:
            notes.append(f"- {row.name}: {row.note}")
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def write_csv(results: Sequence[RowResult], path: str | os.PathLike) -> Path:
    fields = ["table", "row", "family", "sampler", "nfe", "rule", "paper_untuned", "untuned_mean", "untuned_ci_low",
              "untuned_ci_high", "paper_tuned", "tuned_mean", "tuned_ci_low", "tuned_ci_high", "diff_mean",
              "diff_ci_low", "diff_ci_high", "seed_sets", "status"]
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in results:
            row, d = r.row, r.difference

            def cells(e: Estimate | None, name: str) -> dict:
                if e is None:
                    return {f"{name}_mean": "", f"{name}_ci_low": "", f"{name}_ci_high": ""}
                return {f"{name}_mean": e.mean, f"{name}_ci_low": e.ci_low, f"{name}_ci_high": e.ci_high}

            w.writerow({"table": row.table, "row": row.name, "family": row.family, "sampler": row.sampler or "",
                        "nfe": r.nfe if r.nfe is not None else (row.nfe or ""), "rule": row.rule,
                        "paper_untuned": "" if row.paper_baseline is None else row.paper_baseline,
                        "paper_tuned": "" if row.paper_tuned is None else row.paper_tuned,
                        **cells(r.baseline, "untuned"), **cells(r.tuned, "tuned"), **cells(d, "diff"),
                        "seed_sets": len(r.baseline.values) if r.baseline else "",
                        "status": "measured" if r.baseline is not None else (row.needs or "other checkpoint")})
    return path


def plot(table: str, results: Sequence[RowResult], path: str | os.PathLike) -> Path | None:
    """Paper FID against measured FID, one point per (row, untuned/tuned), with the y = x line; None if nothing
    was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = []
    for r in results:
        for label, paper, est in (("untuned", r.row.paper_baseline, r.baseline), ("tuned", r.row.paper_tuned, r.tuned)):
            if paper is not None and est is not None:
                pts.append((r.row.name, label, paper, est))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, label, paper, est in pts:
        err = None if not math.isfinite(est.half_width) else est.half_width
        ax.errorbar(paper, est.mean, yerr=err, fmt="o" if label == "untuned" else "s",
                    color="tab:gray" if label == "untuned" else "tab:blue", capsize=3)
        ax.annotate(f"{name.split('/', 1)[-1]} {label}", (paper, est.mean), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    lo = min(min(p for _, _, p, _ in pts), min(e.mean for *_, e in pts))
    hi = max(max(p for _, _, p, _ in pts), max(e.mean for *_, e in pts))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="measured = paper")
    ax.set_xlabel("FID in the paper")
    ax.set_ylabel("measured FID (mean, 95% interval over seed sets)")
    ax.set_title(f"Seed 003, Table {table}: circles untuned, squares tuned")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plan_text(table: str, plan: Sequence[PlanRow], family: str | None, *, seconds_per_forward: float | None,
              batch: int, device: str) -> str:
    """The plan of a run: per row, samples and network forward passes, and the time they take at the measured
    cost of one forward on ``device``."""
    lines = [f"Table {table} on a {family or 'unrecognised'} checkpoint:",
             f"{'row':<42} {'sampler':<11} {'NFE':>4} {'samples':>9} {'forwards':>12} {'hours':>8}  status"]
    total_f = 0
    for p in plan:
        if not p.runnable:
            lines.append(f"{p.row.name:<42} {p.row.sampler or '-':<11} {p.nfe or '-':>4} {'-':>9} {'-':>12} {'-':>8}"
                         f"  {p.why}")
            continue
        total_f += p.evaluations
        hours = "?" if seconds_per_forward is None else f"{p.evaluations / batch * seconds_per_forward / 3600:.2f}"
        lines.append(f"{p.row.name:<42} {p.row.sampler:<11} {p.nfe:>4} {p.samples:>9} {p.evaluations:>12} {hours:>8}"
                     "  runs")
    if seconds_per_forward is not None:
        lines.append(f"total: {total_f} network forward passes of batch {batch} at {seconds_per_forward * 1e3:.1f} ms "
                     f"each on {device}: {total_f / batch * seconds_per_forward / 3600:.2f} hours of network time "
                     "(feature extraction and decoding not included; stored runs are not recomputed)")
    return "\n".join(lines)


def list_text(all_tables: dict[str, list[Row]]) -> str:
    """Every table and row the presets cover, with what it needs."""
    lines = []
    for t, rows in all_tables.items():
        lines.append(f"Table {t}:")
        for r in rows:
            fids = f"paper {_paper(r.paper_baseline)} -> {_paper(r.paper_tuned)}" if r.paper_tuned is not None \
                else f"paper {_paper(r.paper_baseline)}"
            status = f"needs {r.needs}" if r.needs else f"runs on {r.fam.checkpoint}"
            nfe = r.nfe if r.nfe is not None else (r.sampling().resolved_nfe if not r.needs else None)
            lines.append(f"  {r.name:<40} {r.sampler or '-':<11} NFE {nfe if nfe is not None else '-':<4} "
                         f"{r.rule:<16} {fids:<22} {status}")
    return "\n".join(lines)
