"""Baseline vs tuned samples with the same seeds, side by side, per sampler and NFE (seed 003, Fig. 5).

Seed 003, Fig. 5 (and Fig. 6): samples of the untouched network and of the tuned one from the same
initial noise. Sample i depends only on seed i (its latent, label and any sampler noise come from
seed i's own generator), so the panels of one row differ only by the rule. Each panel is one
cached unit in the results store (the uint8 images); the panels are written as lossless PNG grids
and listed in the result rows together with the mean absolute pixel difference to the untouched
panel (in uint8 levels).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from skiptune.analysis.base import AnalysisResult, cached
from skiptune.analysis.scoring import canonical_rules, check_sampling
from skiptune.core.checksums import state_dict_sha256
from skiptune.core.errors import InputError
from skiptune.experiment.generate import SamplingSpec, generate, to_uint8
from skiptune.io.images import save_grid
from skiptune.sampling import parse_seeds, sampler_fields
from skiptune.store import Store

NAME = "grid"
HELP = "baseline vs tuned images with the same seeds, side by side (Fig. 5)"


def _encode(images: torch.Tensor) -> dict:
    a = images.to(torch.uint8).contiguous().numpy()
    return {"shape": list(a.shape), "uint8": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode(value: dict) -> torch.Tensor:
    a = np.frombuffer(base64.b64decode(value["uint8"]), dtype=np.uint8).reshape(value["shape"])
    return torch.from_numpy(a.copy())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def run_grid(net: nn.Module, *, out: str | Path, samplers: Sequence[str] = ("heun",), nfes: Sequence[int] = (9,),
             rules: Sequence[str] = ("none", "const:0.7"), seeds: str = "0-31", grid: str = "edm",
             mode: str = "concat", ncols: int = 8, class_label: int | None = None, batch: int = 250,
             device: str = "cpu", store: Store | None = None, progress: bool = False) -> AnalysisResult:
    """Generate every (sampler, NFE, rule) panel for ``seeds``; write ``out/grid-files/*.png``.

    Rows: sampler, NFE, rule, seeds, the PNG file and the mean |panel - untouched panel| in uint8 levels.
    """
    rules = ["none", *(r for r in canonical_rules(rules) if r != "none")]
    seed_list = parse_seeds(seeds)
    if not seed_list:
        raise InputError("no seeds given")
    if ncols < 1:
        raise InputError("ncols must be >= 1")
    for s in samplers:
        for n in nfes:
            check_sampling(net, s, n, grid)
    files = Path(out) / "grid-files"
    files.mkdir(parents=True, exist_ok=True)
    model_id = state_dict_sha256(net)
    rows = []
    units = [(s, n, r) for s in samplers for n in nfes for r in rules]
    panels: dict[tuple[str, int, str], torch.Tensor] = {}
    for s, n, r in tqdm(units, desc="grid", unit="panel", disable=not progress):
        config = {"model": model_id, **sampler_fields(s), "nfe": n, "grid": grid, "mode": mode,
                  "rule": r, "seeds": seeds, "class_label": class_label}

        def compute(s=s, n=n, r=r):
            g = generate(net, seed_list, SamplingSpec(s, nfe=n, grid=grid), rule=r, mode=mode, batch_size=batch,
                         class_label=class_label, device=device)
            return _encode(to_uint8(g.images))

        imgs = _decode(cached(store, "grid-panel", config, compute))
        panels[(s, n, r)] = imgs
        path = save_grid(imgs, files / f"{_slug(s)}-nfe{n}-{_slug(r)}.png", ncols=min(ncols, len(seed_list)))
        base = panels[(s, n, "none")]
        rows.append({"sampler": s, "nfe": n, "rule": r, "seeds": seeds, "n_images": len(seed_list),
                     "mean_abs_diff": float((imgs.float() - base.float()).abs().mean()),
                     "file": str(path.resolve())})
    config = {"model": model_id, "samplers": list(samplers), "nfes": [int(n) for n in nfes], "rules": rules,
              "seeds": seeds, "grid": grid, "mode": mode, "class_label": class_label}
    notes = [f"{len(seed_list)} samples per panel, seeds {seeds}, the same seeds in every panel; "
             "mean_abs_diff = mean |panel - untouched panel| in uint8 levels (0 for identical images).",
             f"Panels as lossless PNG grids in {files}."]
    return AnalysisResult(NAME, config, rows, {}, notes)
