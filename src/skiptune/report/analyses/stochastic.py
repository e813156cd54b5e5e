"""The figure of ``skiptune analyze stochastic``, drawn from its result alone."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult


def plot(result: AnalysisResult, path) -> None:
    """Left: FID vs S_churn, one line per rule (Fig. 8); right: the paired difference to the untouched
    network at the same S_churn."""
    from skiptune.report.plots import _plt

    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8))
    for rule in dict.fromkeys(r["rule"] for r in result.rows):
        pts = sorted((r["S_churn"], r) for r in result.rows if r["rule"] == rule)
        label = "untouched" if rule == "none" else rule
        for axis, key in ((ax, "fid"), (bx, "diff")):
            if axis is bx and rule == "none":
                continue
            err = [[_pos(p[1][key] - p[1][f"{key}_ci_low"]) for p in pts],
                   [_pos(p[1][f"{key}_ci_high"] - p[1][key]) for p in pts]]
            axis.errorbar([p[0] for p in pts], [p[1][key] for p in pts], yerr=err, marker="o", capsize=3,
                          label=label)
    bx.axhline(0.0, color="gray", ls="--", lw=1)
    cfg = result.config
    ax.set_title(f"stochastic strength x rho: {cfg.get('sampler')} NFE {cfg.get('nfe')}", fontsize=10)
    bx.set_title("paired difference to untouched at the same S_churn", fontsize=10)
    ax.set_ylabel("FID (mean, 95% CI)")
    bx.set_ylabel("FID - FID untouched (95% CI)")
    for axis in (ax, bx):
        axis.set_xlabel("S_churn (stochastic strength)")
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pos(v: float) -> float:
    return 0.0 if v != v else max(0.0, v)
