"""The paired-difference panel shared by the FID analyses' figures."""

from __future__ import annotations

from collections.abc import Sequence


def _bar(value: float, bound: float) -> float:
    d = abs(value - bound)
    return 0.0 if d != d else d


def plot_paired(ax, labels: Sequence[str], rows: Sequence[dict], *, title: str = "") -> None:
    """Paired differences to the untouched network (``diff`` with its 95% interval) as points, 0 dashed."""
    xs = list(range(len(rows)))
    err = [[_bar(r["diff"], r["diff_ci_low"]) for r in rows], [_bar(r["diff"], r["diff_ci_high"]) for r in rows]]
    ax.errorbar(xs, [r["diff"] for r in rows], yerr=err, fmt="o", capsize=3, color="tab:blue")
    ax.axhline(0.0, color="gray", ls="--", lw=1)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("FID - FID untouched (paired, 95% CI)")
    if title:
        ax.set_title(title, fontsize=10)
