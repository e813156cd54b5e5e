"""Exhaustive window search: tune only inside one window of sampling steps at a time, FID per window (seed 003, Fig. 7).

Seed 003, Sec. 5.2: the sigma range [0.002, 80] of the sampler is split into 13 non-overlapping
windows of 4 sampling steps; Skip-Tuning is applied inside one window at a time and the original
network everywhere else; Fig. 7 plots the FID per window (tuning in the middle of the sigma range
helps most).

Windows. The sampler's grid sigma_0 > sigma_1 > ... > sigma_N has N steps; step i starts at
sigma_i. Window j holds the w consecutive steps i = jw .. e_j - 1, e_j = min((j + 1) w, N) (the
last window may be shorter), i.e. the grid sigmas sigma_{jw} .. sigma_{e_j - 1}. It is the rule
``window:lo_j:hi_j:RULE`` (:class:`~skiptune.skip.rules.Window`: RULE for lo_j <= sigma <= hi_j,
rho = 1 elsewhere) with the bounds at geometric means of neighbouring grid sigmas,

    hi_j = sqrt(sigma_{jw - 1} sigma_{jw})   (hi_0 = 2 sigma_0),
    lo_j = sqrt(sigma_{e_j - 1} sigma_{e_j})  (lo = 0 for the last window),

so every grid sigma lies in exactly one window and no bound (written with 6 significant digits)
falls on a grid point. Every denoiser evaluation is tuned iff its sigma is in the window: for Heun
the corrector of step i runs at sigma_{i+1} and is therefore tuned with the window of step i + 1.
The windows are disjoint and together cover every evaluation, so "tuning in all windows" is the
plain rule; both that and the untouched network are measured on the same seed sets. (EDM's
stochastic sampler evaluates at t_hat = t_i (1 + gamma) > t_i, which can fall into the window above
that of step i: use a deterministic sampler for a clean attribution.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.scoring import (
    FidSetup,
    canonical_rules,
    check_sampling,
    estimate_columns,
    fid_estimates,
)
from skiptune.core.errors import InputError
from skiptune.core.stats import paired_difference, significant
from skiptune.sampling import sampler_fields
from skiptune.store import Store

NAME = "windows"
HELP = "exhaustive window search: tune inside one window of steps at a time, FID per window (Fig. 7)"


@dataclass(frozen=True)
class StepWindow:
    """Window ``index``: steps ``first_step .. last_step`` (inclusive), their start sigmas, and its rule."""

    index: int
    first_step: int
    last_step: int
    sigma_start: float  # sigma at the start of the window (the largest grid sigma in it)
    sigma_end: float  # the smallest grid sigma at which a step of the window starts
    lo: float
    hi: float
    rule: str


def step_windows(sigmas: Sequence[float], window_steps: int, rule: str) -> list[StepWindow]:
    """Consecutive windows of ``window_steps`` steps over a decreasing grid (see the module docstring)."""
    s = [float(v) for v in sigmas]
    n = len(s) - 1
    if n < 1 or any(b >= a for a, b in zip(s, s[1:], strict=False)):
        raise InputError("step_windows needs a strictly decreasing sigma grid with at least one step")
    if int(window_steps) != window_steps or window_steps < 1:
        raise InputError(f"window size must be a whole number of steps >= 1, got {window_steps}")
    inner = canonical_rules([rule])[0]
    out = []
    for j, first in enumerate(range(0, n, window_steps)):
        end = min(first + window_steps, n)
        hi = 2.0 * s[0] if first == 0 else math.sqrt(s[first - 1] * s[first])
        lo = 0.0 if end == n or s[end] == 0 else math.sqrt(s[end - 1] * s[end])
        text = canonical_rules([f"window:{lo:.6g}:{hi:.6g}:{inner}"])[0]
        out.append(StepWindow(j, first, end - 1, s[first], s[end - 1], lo, hi, text))
    return out


def run_windows(net: nn.Module, setup: FidSetup, *, sampler: str = "heun", nfe: int = 9, window_steps: int = 1,
                rule: str = "const:0.7", only: Sequence[int] | None = None, store: Store | None = None,
                progress: bool = False) -> AnalysisResult:
    """FID with ``rule`` applied in one window of ``window_steps`` steps at a time (seed 003, Fig. 7).

    Rows: the untouched network (``window = none``), the rule in every step (``all``) and one row per
    window, with the mean FID over the seed sets, its 95% t interval and the paired difference to
    the untouched network. ``only`` restricts the windows computed (indices; for partial runs).
    """
    sigmas = check_sampling(net, sampler, nfe, setup.grid)
    inner = canonical_rules([rule])[0]
    wins = step_windows(sigmas, window_steps, inner)
    if only is not None:
        bad = sorted(set(only) - {w.index for w in wins})
        if bad:
            raise InputError(f"window indices {bad} do not exist: the grid has {len(wins)} windows "
                             f"(0..{len(wins) - 1})")
        wins = [w for w in wins if w.index in set(only)]
    rules = ["none", inner, *(w.rule for w in wins)]
    est = fid_estimates(net, setup, sampler=sampler, nfe=nfe, rules=rules, store=store, progress=progress)
    base = est["none"]
    rows = []
    for label, w, r in [("none", None, "none"), ("all", None, inner), *((str(w.index), w, w.rule) for w in wins)]:
        e = est[r]
        d = paired_difference(e, base)
        rows.append({
            "window": label,
            "steps": _steps(w.first_step, w.last_step) if w else ("-" if r == "none" else _steps(0, len(sigmas) - 2)),
            "sigma_start": w.sigma_start if w else sigmas[0],
            "sigma_end": w.sigma_end if w else sigmas[-2],
            "rule": r, **estimate_columns(e), **estimate_columns(d, "diff"),
            "vs_none": "-" if label == "none" else significant(d),
        })
    win_rows = rows[2:]
    best = min(win_rows, key=lambda row: row["fid"]) if win_rows else None
    summary = {"fid_none": base.mean, "fid_all": est[inner].mean}
    if best is not None:
        summary.update({"best_window": best["window"],
                        "best_window_sigmas": f"{best['sigma_start']:.4g}..{best['sigma_end']:.4g}",
                        "best_window_fid": best["fid"], "best_window_diff": best["diff"]})
    config = {**sampler_fields(sampler), "nfe": nfe,
              "steps": len(sigmas) - 1, "window_steps": window_steps, "rule": inner,
              "windows": [w.index for w in wins], **setup.config()}
    notes = [
        f"{sampler}, NFE {nfe} ({len(sigmas) - 1} steps on the {setup.grid} grid); windows of {window_steps} step(s); "
        f"the rule `{inner}` only for sigma inside the window, rho = 1 outside (seed 003, Fig. 7: 13 windows of 4 "
        "steps on EDM ImageNet-64).",
        "A window covers the grid sigmas at which its steps start (sigma_start..sigma_end); Heun's corrector at "
        "sigma_{i+1} belongs to the window of step i+1.",
        setup.note(),
    ]
    return AnalysisResult(NAME, config, rows, summary, notes)


def _steps(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"
