"""The figure of ``skiptune analyze windows``, drawn from its result alone."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult


def plot(result: AnalysisResult, path) -> None:
    """Left: FID per window (labelled by its sigmas) with the untouched and all-steps levels; right: the paired
    differences to the untouched network, which carry the comparison (the seed-set noise cancels)."""
    from skiptune.report.analyses._paired import plot_paired
    from skiptune.report.plots import _plt

    plt = _plt()
    rows = {r["window"]: r for r in result.rows}
    wins = [r for r in result.rows if r["window"] not in ("none", "all")]
    labels = [f"{r['window']}\n{r['sigma_start']:.3g}" + ("" if r["sigma_start"] == r["sigma_end"]
                                                          else f"..{r['sigma_end']:.3g}") for r in wins]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(2 * max(4.5, 0.8 * len(wins) + 2), 3.8))
    xs = list(range(len(wins)))
    err = [[_half(r["fid"], r["fid_ci_low"]) for r in wins], [_half(r["fid_ci_high"], r["fid"]) for r in wins]]
    ax.errorbar(xs, [r["fid"] for r in wins], yerr=err, marker="o", capsize=3, label="tuned in this window only")
    for key, color, label in (("none", "gray", "untouched"), ("all", "tab:red", "tuned in every step")):
        if key in rows:
            ax.axhline(rows[key]["fid"], color=color, ls="--", lw=1, label=f"{label} ({rows[key]['fid']:.3g})")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlabel("window (sigma at its steps' starts, high to low)")
    ax.set_ylabel("FID (mean, 95% CI)")
    cfg = result.config
    ax.set_title(f"window search: {cfg.get('sampler')} NFE {cfg.get('nfe')}, {cfg.get('rule')}", fontsize=10)
    ax.legend(fontsize=8)
    paired = [rows["all"], *wins] if "all" in rows else wins
    plot_paired(bx, (["all"] if "all" in rows else []) + labels, paired, title="paired difference to untouched")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _half(a: float, b: float) -> float:
    d = a - b
    return 0.0 if d != d else max(0.0, d)
