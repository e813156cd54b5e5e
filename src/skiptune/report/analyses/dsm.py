"""The figure of ``skiptune analyze dsm``, drawn from its result alone."""

from __future__ import annotations

from pathlib import Path

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.dsm import LOGNORMAL


def plot(result: AnalysisResult, path: str | Path) -> Path:
    """Paired relative change of each loss (tuned vs baseline) against sigma: pixel and Haar bands (left),
    feature spaces (right); 95% intervals."""
    from skiptune.report.plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    tuned = [r for r in result.rows if "diff" in r and r["sigma"] != LOGNORMAL]
    for ax, pick, title in ((axes[0], lambda s: not s.startswith("feature:"), "pixel and Haar bands"),
                            (axes[1], lambda s: s.startswith("feature:"), "feature spaces")):
        for rule in dict.fromkeys(r["rule"] for r in tuned):
            for space in dict.fromkeys(r["space"] for r in tuned if pick(r["space"])):
                pts = sorted((r["sigma"], r) for r in tuned if r["rule"] == rule and r["space"] == space)
                xs = [p[0] for p in pts]
                base = [p[1]["loss_base"] for p in pts]
                ys = [100 * p[1]["diff"] / b for p, b in zip(pts, base, strict=True)]
                lo = [100 * (p[1]["diff"] - p[1]["diff_ci_low"]) / b for p, b in zip(pts, base, strict=True)]
                hi = [100 * (p[1]["diff_ci_high"] - p[1]["diff"]) / b for p, b in zip(pts, base, strict=True)]
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=f"{space} [{rule}]")
        ax.axhline(0, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("sigma")
        ax.set_ylabel("(tuned - baseline) / baseline, %")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
