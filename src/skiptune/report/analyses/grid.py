"""The figure of ``skiptune analyze grid``, drawn from its result alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skiptune.analysis.base import AnalysisResult


def plot(result: AnalysisResult, path) -> None:
    """One row per (sampler, NFE), one column per rule, from the PNG files listed in the rows."""
    from skiptune.report.plots import _plt

    plt = _plt()
    keys = list(dict.fromkeys((r["sampler"], r["nfe"]) for r in result.rows))
    rules = list(dict.fromkeys(r["rule"] for r in result.rows))
    images = {(r["sampler"], r["nfe"], r["rule"]): _load(Path(r["file"])) for r in result.rows}
    h, w = next(iter(images.values())).shape[:2] if images else (1, 1)
    cell = 3.2
    fig, axes = plt.subplots(len(keys), len(rules), figsize=(cell * len(rules), (cell * h / w + 0.6) * len(keys)),
                             squeeze=False)
    for i, (s, n) in enumerate(keys):
        for j, rule in enumerate(rules):
            ax = axes[i][j]
            ax.axis("off")
            arr = images.get((s, n, rule))
            if arr is None:
                continue
            ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, interpolation="nearest", vmin=0, vmax=255)
            ax.set_title(f"{s} NFE {n}\n{'untouched' if rule == 'none' else rule}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _load(file: Path) -> np.ndarray:
    """The panel PNG, or a mid-gray placeholder (with a warning) if the file is gone."""
    import warnings

    from PIL import Image

    if not file.is_file():
        warnings.warn(f"panel image {file} is missing (rerun `skiptune analyze grid` to rewrite it)", stacklevel=2)
        return np.full((8, 8), 128, dtype=np.uint8)
    return np.asarray(Image.open(file))
