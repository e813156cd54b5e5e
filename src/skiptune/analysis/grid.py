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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from skiptune.adapters import MODES
from skiptune.analysis.base import AnalysisResult, cached
from skiptune.analysis.scoring import canonical_rules, check_sampling
from skiptune.core.checks import integer
from skiptune.core.checksums import state_dict_sha256
from skiptune.core.errors import InputError
from skiptune.experiment.generate import DISCRETE_GRIDS, SamplingSpec, generate, to_uint8
from skiptune.io.images import save_grid
from skiptune.sampling import GRIDS, SAMPLERS, parse_seeds, sampler_fields
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


@dataclass(frozen=True)
class GridConfig:
    """Every setting of :func:`run_grid` (the defaults are those of ``skiptune analyze grid``).

    One panel per (sampler, NFE, rule), each of the samples of ``seeds``; ``rules`` are kept in canonical
    form with the untouched network (``none``) first, added if missing. ``ncols``: images per row of a
    panel; ``class_label``: one class for all samples (conditional nets; None: a class per seed).
    Validated on construction (:class:`~skiptune.core.errors.InputError` naming the setting); the
    settings that need the network (its sigma range, discrete grids) are checked by :func:`run_grid`.
    """

    samplers: tuple[str, ...] = ("heun",)
    nfes: tuple[int, ...] = (9,)
    rules: tuple[str, ...] = ("none", "const:0.7")
    seeds: str = "0-31"
    grid: str = "edm"
    mode: str = "concat"
    ncols: int = 8
    class_label: int | None = None
    batch: int = 250
    device: str = "cpu"

    def __post_init__(self):
        object.__setattr__(self, "samplers", _names("samplers", self.samplers))
        value = tuple(integer(n, minimum=1, what="GridConfig.nfes") for n in _names("nfes", self.nfes))
        object.__setattr__(self, "nfes", value)
        try:
            rules = canonical_rules(self.rules)
        except ValueError as exc:
            raise InputError(f"GridConfig.rules: {exc} (give rules such as ('none', 'const:0.7'))") from None
        object.__setattr__(self, "rules", ("none", *(r for r in rules if r != "none")))
        try:
            if not parse_seeds(self.seeds):
                raise InputError("no seeds given")
        except (TypeError, ValueError) as exc:
            raise InputError(f"GridConfig.seeds: {exc} (give seeds such as '0-31')") from None
        if self.grid not in GRIDS and self.grid not in DISCRETE_GRIDS:
            raise InputError(f"GridConfig.grid: unknown grid {self.grid!r}; use one of "
                             f"{', '.join([*GRIDS, *DISCRETE_GRIDS])}")
        if self.mode not in MODES:
            raise InputError(f"GridConfig.mode: unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        integer(self.ncols, minimum=1, what="GridConfig.ncols")
        integer(self.batch, minimum=1, what="GridConfig.batch")
        if self.class_label is not None:
            integer(self.class_label, minimum=0, what="GridConfig.class_label")
        for s in self.samplers:
            if s not in SAMPLERS:
                raise InputError(f"GridConfig.samplers: unknown sampler {s!r}; use one of {', '.join(SAMPLERS)}")
            for n in self.nfes:
                try:
                    SamplingSpec(s, nfe=n)
                except ValueError as exc:
                    raise InputError(f"GridConfig.nfes: {exc}") from None

    @property
    def seed_list(self) -> list[int]:
        return parse_seeds(self.seeds)


def _names(name: str, values) -> tuple:
    """``values`` as a non-empty tuple (InputError naming the setting otherwise)."""
    try:
        out = () if isinstance(values, str | bytes) else tuple(values)
    except TypeError:
        out = ()
    if not out:
        raise InputError(f"GridConfig.{name} must be a non-empty sequence, e.g. samplers=('heun',), nfes=(9,); "
                         f"got {values!r}")
    return out


def _panel(net: nn.Module, config: GridConfig, unit: tuple[str, int, str], model_id: str,
           store: Store | None) -> torch.Tensor:
    """The uint8 samples of one (sampler, NFE, rule) panel, from the store or generated."""
    s, n, r = unit
    key = {"model": model_id, **sampler_fields(s), "nfe": n, "grid": config.grid, "mode": config.mode,
           "rule": r, "seeds": config.seeds, "class_label": config.class_label}

    def compute():
        g = generate(net, config.seed_list, SamplingSpec(s, nfe=n, grid=config.grid), rule=r, mode=config.mode,
                     batch_size=config.batch, class_label=config.class_label, device=config.device)
        return _encode(to_uint8(g.images))

    return _decode(cached(store, "grid-panel", key, compute))


def run_grid(net: nn.Module, out: str | Path, config: GridConfig = GridConfig(), *, store: Store | None = None,
             progress: bool = False) -> AnalysisResult:
    """Generate every (sampler, NFE, rule) panel of ``config``; write ``out/grid-files/*.png``.

    Rows: sampler, NFE, rule, seeds, the PNG file and the mean |panel - untouched panel| in uint8 levels.
    """
    for s in config.samplers:
        for n in config.nfes:
            check_sampling(net, s, n, config.grid)
    seed_list = config.seed_list
    files = Path(out) / "grid-files"
    files.mkdir(parents=True, exist_ok=True)
    model_id = state_dict_sha256(net)
    rows = []
    units = [(s, n, r) for s in config.samplers for n in config.nfes for r in config.rules]
    panels: dict[tuple[str, int, str], torch.Tensor] = {}
    for s, n, r in tqdm(units, desc="grid", unit="panel", disable=not progress):
        imgs = panels[(s, n, r)] = _panel(net, config, (s, n, r), model_id, store)
        path = save_grid(imgs, files / f"{_slug(s)}-nfe{n}-{_slug(r)}.png", ncols=min(config.ncols, len(seed_list)))
        base = panels[(s, n, "none")]
        rows.append({"sampler": s, "nfe": n, "rule": r, "seeds": config.seeds, "n_images": len(seed_list),
                     "mean_abs_diff": float((imgs.float() - base.float()).abs().mean()),
                     "file": str(path.resolve())})
    result_config = {"model": model_id, "samplers": list(config.samplers), "nfes": list(config.nfes),
                     "rules": list(config.rules), "seeds": config.seeds, "grid": config.grid, "mode": config.mode,
                     "class_label": config.class_label}
    notes = [f"{len(seed_list)} samples per panel, seeds {config.seeds}, the same seeds in every panel; "
             "mean_abs_diff = mean |panel - untouched panel| in uint8 levels (0 for identical images).",
             f"Panels as lossless PNG grids in {files}."]
    return AnalysisResult(NAME, result_config, rows, {}, notes)
