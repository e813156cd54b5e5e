"""The figure of ``skiptune analyze sweep``, drawn from its result alone."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.sweep import CURVE_FAMILIES
from skiptune.core.stats import Estimate
from skiptune.runs.sweep import SweepRow


def plot(result: AnalysisResult, path) -> None:
    """Fig. 4: one panel per sampler, one line per NFE (and rule family), with the 95% intervals."""
    from skiptune.report.plots import plot_fid_vs_rho

    rows = [SweepRow(r["sampler"], int(r["nfe"]), r["rule"],
                     Estimate(r["fid"], r["fid_ci_low"], r["fid_ci_high"], float("nan"), (), 0.95))
            for r in result.rows if r.get("rho") is not None and r["rule"].split(":")[0] in CURVE_FAMILIES]
    if not rows:
        from skiptune.report.plots import _plt

        plt = _plt()
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no rule on a rho axis in this result", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    diffs = {(r["sampler"], int(r["nfe"]), r["rule"]): Estimate(r["diff"], r["diff_ci_low"], r["diff_ci_high"],
                                                                float("nan"), (), 0.95)
             for r in result.rows if r.get("rho") is not None and r.get("diff") == r.get("diff")}
    plot_fid_vs_rho(rows, path, title=f"FID vs rho (model {result.config.get('model')})", diffs=diffs or None)
