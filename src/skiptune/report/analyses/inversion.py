"""The figure of ``skiptune analyze inversion``, drawn from its result alone."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult


def plot(result: AnalysisResult, path) -> None:
    """Relative MMD^2 per kernel (bars per rule), baseline = 1 (Table 13)."""
    from skiptune.report.plots import _plt

    plt = _plt()
    kernels = list(dict.fromkeys(r["kernel"] for r in result.rows))
    rules = [r for r in dict.fromkeys(r["rule"] for r in result.rows) if r != "none"]
    fig, ax = plt.subplots(figsize=(2.5 + 1.1 * len(kernels), 3.8))
    width = 0.8 / max(1, len(rules))
    for j, rule in enumerate(rules):
        vals = [next(r["relative"] for r in result.rows if r["kernel"] == k and r["rule"] == rule) for k in kernels]
        xs = [i + (j - (len(rules) - 1) / 2) * width for i in range(len(kernels))]
        ax.bar(xs, vals, width, label=rule)
    ax.axhline(1.0, color="gray", ls="--", lw=1, label="untouched = 1")
    ax.set_xticks(range(len(kernels)))
    ax.set_xticklabels(kernels, rotation=20, fontsize=8)
    ax.set_ylabel("MMD^2 relative to untouched")
    cfg = result.config
    ax.set_title(f"inverted noise vs N(0, I): {cfg.get('sampler')}, {cfg.get('steps')} steps", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
