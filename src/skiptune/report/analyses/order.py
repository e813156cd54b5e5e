"""The figure of ``skiptune analyze order``, drawn from its result alone."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.order import ORDERS


def plot(result: AnalysisResult, path) -> None:
    """Left: FID per order for each rho_0 with the untouched level; right: paired differences to untouched."""
    from skiptune.report.analyses._paired import plot_paired
    from skiptune.report.plots import _plt

    plt = _plt()
    base = next((r for r in result.rows if r["rule"] == "none"), None)
    tuned = [r for r in result.rows if r["rule"] != "none"]
    groups = list(dict.fromkeys(r["rho0"] for r in tuned))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(2 * (2.5 + 1.8 * len(groups)), 3.8))
    width = 0.25
    for k, order in enumerate(ORDERS):
        pts = [next(r for r in tuned if r["rho0"] == g and r["order"] == order) for g in groups]
        xs = [i + (k - 1) * width for i in range(len(groups))]
        lo = [_pos(p["fid"] - p["fid_ci_low"]) for p in pts]
        hi = [_pos(p["fid_ci_high"] - p["fid"]) for p in pts]
        ax.bar(xs, [p["fid"] for p in pts], width, yerr=[lo, hi], capsize=3, label=order)
    if base is not None:
        ax.axhline(base["fid"], color="gray", ls="--", lw=1, label=f"untouched ({base['fid']:.3g})")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"rho_0 = {g:g}" for g in groups])
    ax.set_ylabel("FID (mean, 95% CI)")
    cfg = result.config
    ax.set_title(f"time order of rho: {cfg.get('sampler')} NFE {cfg.get('nfe')}", fontsize=10)
    ax.legend(fontsize=8)
    short = {"constant": "const", "increasing": "up", "decreasing": "down"}
    plot_paired(bx, [f"{short[r['order']]}\n{r['rho0']:g}" for r in tuned], tuned,
                title="paired difference to untouched")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pos(v: float) -> float:
    return 0.0 if v != v else max(0.0, v)
