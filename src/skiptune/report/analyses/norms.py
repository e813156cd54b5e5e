"""The figure of ``skiptune analyze norms``, drawn from its result alone."""

from __future__ import annotations

from pathlib import Path

from skiptune.analysis.base import AnalysisResult


def plot(result: AnalysisResult, path: str | Path) -> Path:
    """Fig. 2: bar per site (averaged over sigma, 95% CI) with the layer mean; right, prop_i against sigma."""
    from skiptune.report.plots import _plt

    plt = _plt()
    avg = [r for r in result.rows if r["sigma"] == "mean"]
    curves = [r for r in result.rows if r["sigma"] != "mean"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    xs = [r["site"] for r in avg]
    ys = [r["prop"] for r in avg]
    err = [[y - r["prop_ci_low"] for y, r in zip(ys, avg, strict=True)],
           [r["prop_ci_high"] - y for y, r in zip(ys, avg, strict=True)]]
    a.bar(xs, ys, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
    mean = result.summary.get("mean_prop")
    if mean is not None:
        a.axhline(mean, color="tab:red", ls="--", label=f"mean {mean:.3f}")
        a.legend()
    a.set_xticks(xs, [f"{r['site']}\n{r['resolution']}" for r in avg], fontsize=7)
    a.set_xlabel("skip site (0 = innermost) / resolution")
    a.set_ylabel("||d_i|| / ||u_i||")
    a.set_title(f"rule {result.config.get('rule', 'none')}, mean over sigma")
    for i in xs:
        pts = sorted((r["sigma"], r["prop"]) for r in curves if r["site"] == i)
        b.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=f"site {i}")
    b.set_xscale("log")
    b.set_xlabel("sigma")
    b.set_ylabel("||d_i|| / ||u_i||")
    b.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
