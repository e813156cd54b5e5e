"""The figure of ``skiptune analyze complexity``, drawn from its result alone."""

from __future__ import annotations

from pathlib import Path

from skiptune.analysis.base import AnalysisResult


def plot(result: AnalysisResult, path: str | Path) -> Path:
    """Fig. 3: Jacobian norm against rho, one line per sigma (left); paired ratio to the baseline (right)."""
    from skiptune.report.plots import _plt

    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for s in sorted({r["sigma"] for r in result.rows}, reverse=True):
        pts = sorted((r["rho"], r) for r in result.rows if r["sigma"] == s and r["rho"] is not None)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ys = [p[1]["frobenius"] for p in pts]
        lo = [y - p[1].get("frobenius_ci_low", y) for y, p in zip(ys, pts, strict=True)]
        hi = [p[1].get("frobenius_ci_high", y) - y for y, p in zip(ys, pts, strict=True)]
        lo = [0.0 if v != v else v for v in lo]
        hi = [0.0 if v != v else v for v in hi]
        a.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=f"sigma {s:g}")
        if "ratio_to_baseline" in pts[0][1]:
            b.plot(xs, [p[1]["ratio_to_baseline"] for p in pts], marker="o", label=f"sigma {s:g}")
    a.set_xlabel("rho (const) / rho_bottom (layer)")
    a.set_ylabel("E ||dD/dx||_F")
    a.set_yscale("log")
    a.legend()
    b.axhline(1.0, color="gray", lw=0.8, ls="--")
    b.set_xlabel("rho")
    b.set_ylabel("||dD/dx||_F / baseline (paired)")
    b.legend()
    fig.suptitle(f"estimator: {result.config.get('estimator')}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
