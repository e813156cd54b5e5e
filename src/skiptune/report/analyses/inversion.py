"""The figure of ``skiptune analyze inversion``, drawn from its result alone."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult


def plot(result: AnalysisResult, path) -> None:
    """Relative MMD per kernel (bars per rule), baseline = 1 (Table 13): one panel per latent set (raw and
    standardised). Results stored before the standardised latents hold one raw panel of relative MMD^2."""
    from skiptune.report.plots import _plt

    plt = _plt()
    old = "relative_mmd" not in (result.rows[0] if result.rows else {})
    value = "relative" if old else "relative_mmd"
    panels = ["raw"] if old else list(dict.fromkeys(r["latents"] for r in result.rows))
    kernels = list(dict.fromkeys(r["kernel"] for r in result.rows))
    rules = [r for r in dict.fromkeys(r["rule"] for r in result.rows) if r != "none"]
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (2.5 + 1.1 * len(kernels)), 3.8), squeeze=False)
    width = 0.8 / max(1, len(rules))
    for ax, latents in zip(axes[0], panels, strict=True):
        rows = [r for r in result.rows if old or r["latents"] == latents]
        for j, rule in enumerate(rules):
            vals = [next(r[value] for r in rows if r["kernel"] == k and r["rule"] == rule) for k in kernels]
            xs = [i + (j - (len(rules) - 1) / 2) * width for i in range(len(kernels))]
            ax.bar(xs, vals, width, label=rule)
        ax.axhline(1.0, color="gray", ls="--", lw=1, label="untouched = 1")
        ax.set_xticks(range(len(kernels)))
        ax.set_xticklabels(kernels, rotation=20, fontsize=8)
        ax.set_ylabel("MMD^2 relative to untouched" if old else "MMD relative to untouched")
        cfg = result.config
        ax.set_title(f"{latents} latents vs N(0, I): {cfg.get('sampler')}, {cfg.get('steps')} steps", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
