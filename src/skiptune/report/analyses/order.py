"""The figure of ``skiptune analyze order``, drawn from its result alone."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult

COLORS = {"constant": "tab:gray", "increasing": "tab:blue", "decreasing": "tab:orange"}


def plot(result: AnalysisResult, path) -> None:
    """Left: FID of constant rho and of the increasing / decreasing ramps along each axis, per rho_0, with the
    untouched level; right: paired differences to untouched."""
    from skiptune.report.analyses._paired import plot_paired
    from skiptune.report.plots import _plt

    plt = _plt()
    base = next((r for r in result.rows if r["rule"] == "none"), None)
    tuned = [r for r in result.rows if r["rule"] != "none"]
    # results stored before the step and time axes have no "axis" column: they are sigma ramps
    short = {"constant": "const", "increasing": "up", "decreasing": "down"}
    labels = [f"{short.get(r['order'], r['order'])}\n{_axis(r)}\n{r['rho0']:g}" for r in tuned]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(2 * (2.5 + 0.6 * len(tuned)), 4.2))
    xs = list(range(len(tuned)))
    lo = [_pos(r["fid"] - r["fid_ci_low"]) for r in tuned]
    hi = [_pos(r["fid_ci_high"] - r["fid"]) for r in tuned]
    ax.bar(xs, [r["fid"] for r in tuned], 0.7, yerr=[lo, hi], capsize=3,
           color=[COLORS.get(r["order"], "tab:green") for r in tuned])
    if base is not None:
        ax.axhline(base["fid"], color="gray", ls="--", lw=1, label=f"untouched ({base['fid']:.3g})")
        ax.legend(fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("FID (mean, 95% CI)")
    cfg = result.config
    ax.set_title(f"time order of rho: {cfg.get('sampler')} NFE {cfg.get('nfe')}", fontsize=10)
    plot_paired(bx, labels, tuned, title="paired difference to untouched")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _axis(row: dict) -> str:
    return row.get("axis", "-" if row["order"] == "constant" else "sigma")


def _pos(v: float) -> float:
    return 0.0 if v != v else max(0.0, v)
