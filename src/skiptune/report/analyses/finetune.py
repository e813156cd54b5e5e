"""The figure of ``skiptune analyze finetune``, drawn from its result alone."""

from __future__ import annotations

from pathlib import Path

from skiptune.analysis.base import AnalysisResult


def plot(result: AnalysisResult, path: str | Path) -> Path:
    """Per-site rho of every compared rule (left); each method's FID minus the baseline's on the same seeds (right)."""
    from skiptune.report.plots import _plt
    from skiptune.skip import as_rule

    plt = _plt()
    fig, (a, c) = plt.subplots(1, 2, figsize=(12, 4.2))
    k = int(result.summary.get("num_sites", 0))
    for rule, name in dict((r["rule"], r["method"]) for r in result.rows if r["rule"] != "none").items():
        try:
            values = [float(as_rule(rule).factor(i, k, None)) for i in range(k)]
        except (RuntimeError, IndexError, ValueError):  # sigma-dependent rules have no single rho per site
            continue
        a.plot(range(k), values, marker="o", label=name)
    a.axhline(1.0, color="gray", lw=0.8, ls="--", label="baseline")
    a.set_xlabel("skip site (0 = innermost)")
    a.set_ylabel("rho")
    a.legend(fontsize=7)
    rows = [r for r in result.rows if "fid_diff" in r]
    ys = [r["fid_diff"] for r in rows]
    lo = [0.0 if r["fid_diff_ci_low"] != r["fid_diff_ci_low"] else r["fid_diff"] - r["fid_diff_ci_low"] for r in rows]
    hi = [0.0 if r["fid_diff_ci_high"] != r["fid_diff_ci_high"] else r["fid_diff_ci_high"] - r["fid_diff"]
          for r in rows]
    c.bar(range(len(ys)), ys, yerr=[lo, hi], capsize=3, color=["tab:green" if y < 0 else "tab:red" for y in ys],
          alpha=0.8)
    for x, r in enumerate(rows):
        c.annotate(f"FID {r['fid']:.3g}", (x, r["fid_diff"]), ha="center", va="bottom", fontsize=7)
    c.axhline(0, color="gray", lw=0.8)
    c.set_xticks(range(len(ys)), [f"{r['method']}\nNFE {r['nfe']}" for r in rows], rotation=60, ha="right",
                 fontsize=7)
    c.set_ylabel("FID - baseline FID (paired, 95% CI)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
