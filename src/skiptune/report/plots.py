"""Figures: FID vs rho curves (seed 003, Fig. 4) and baseline vs tuned image grids (Fig. 5)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from skiptune.io.images import make_grid


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(est) -> float:
    """Half-width of an interval for errorbar (0 where it has none)."""
    half = est.half_width
    return 0.0 if half != half else half


def plot_fid_vs_rho(rows: Sequence, path: str | os.PathLike, title: str = "",
                    diffs: Mapping[tuple[str, int, str], Any] | None = None) -> Path:
    """One panel per sampler; one line per NFE and rule family; mean FID over seed sets with its t-interval.

    With ``diffs`` (``(sampler, nfe, rule) -> Estimate`` of FID minus the untouched FID, paired over the
    same seed sets), a second row shows them: the unpaired intervals of the top row include the seed-set
    noise that the paired ones cancel.
    """
    plt = _plt()
    samplers = list(dict.fromkeys(r.sampler for r in rows))
    nrows = 2 if diffs else 1
    fig, axes = plt.subplots(nrows, len(samplers), figsize=(5 * len(samplers), 3.8 * nrows), squeeze=False)
    for col, s in enumerate(samplers):
        group = [r for r in rows if r.sampler == s and r.rho_bottom is not None]
        families = sorted({r.rule.split(":")[0] for r in group} - {"none"}) or ["none"]
        for n in sorted({r.nfe for r in group}):
            for fam in families:  # one line per rule family; the untouched net sits at rho = 1 on each
                pts = sorted(((r.rho_bottom, r) for r in group if r.nfe == n and r.rule.split(":")[0] in (fam, "none")),
                             key=lambda p: p[0])
                if not pts:
                    continue
                label = f"NFE {n}" + (f", {fam}" if len(families) > 1 else "")
                axes[0][col].errorbar([x for x, _ in pts], [r.estimate.mean for _, r in pts],
                                      yerr=[_err(r.estimate) for _, r in pts], marker="o", capsize=3, label=label)
                paired = [(x, diffs[(s, n, r.rule)]) for x, r in pts if diffs and (s, n, r.rule) in diffs]
                if paired:
                    axes[1][col].errorbar([x for x, _ in paired], [d.mean for _, d in paired],
                                          yerr=[_err(d) for _, d in paired], marker="o", capsize=3, label=label)
        for row in range(nrows):
            ax = axes[row][col]
            ax.axvline(1.0, color="gray", lw=0.8, ls="--")
            ax.set_xlabel("rho (const) / rho_bottom (layer, rho_top = 1)")
            ax.legend(fontsize=8)
        axes[0][col].set_ylabel("FID (mean over seed sets, 95% CI)")
        axes[0][col].set_title(f"{s}")
        if diffs:
            axes[1][col].axhline(0.0, color="gray", lw=0.8)
            axes[1][col].set_ylabel("FID - FID untouched (paired, 95% CI)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_side_by_side(panels: Sequence[tuple[str, torch.Tensor]], path: str | os.PathLike, ncols: int = 8,
                      title: str = "") -> Path:
    """Image grids (uint8 [N, C, H, W]) next to each other, each titled (same seeds in each)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, imgs) in zip(axes[0], panels, strict=True):
        grid = make_grid(imgs, ncols=ncols)
        arr = grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy()
        ax.imshow(arr, cmap="gray" if grid.shape[0] == 1 else None, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_best_grids(net, rows: Sequence, out: str | os.PathLike, *, seeds: str = "0-31", grid: str = "edm",
                     mode: str = "concat", device: str = "cpu", end: str | None = None,
                     cache: str | None = None) -> list[Path]:
    """Per (sampler, NFE) of a sweep: the baseline and the best rule side by side, same seeds (seed 003, Fig. 5)."""
    from skiptune.experiment import SamplingSpec, generate, to_uint8
    from skiptune.runs.sweep import best_rows

    paths = []
    for (s, n), (best, base) in best_rows(rows).items():
        panels = []
        for r in dict.fromkeys([base.rule if base else "none", best.rule]):
            g = generate(net, seeds, SamplingSpec(s, nfe=n, grid=grid, end=end), rule=r, mode=mode, batch_size=32,
                         device=device, cache=cache)
            panels.append((f"{s} NFE {n}, {r}\nseeds {seeds}, row by row", to_uint8(g.images)))
        paths.append(plot_side_by_side(panels, Path(out) / f"grid_{s}_{n}.png"))
    return paths
