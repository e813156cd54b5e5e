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
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.scoring import (
    FidSetup,
    canonical_rules,
    check_sampling,
    estimate_columns,
    fid_estimates,
)
from skiptune.core.checks import integer
from skiptune.core.errors import InputError
from skiptune.core.stats import Estimate, paired_difference, significant
from skiptune.experiment.generate import SamplingSpec
from skiptune.sampling import sampler_fields
from skiptune.store import Store

NAME = "windows"
HELP = "exhaustive window search: tune inside one window of steps at a time, FID per window (Fig. 7)"


@dataclass(frozen=True)
class WindowsConfig:
    """Every setting of the window search besides the :class:`FidSetup` (defaults: ``skiptune analyze windows``).

    ``sampler`` and ``nfe`` pick the sampling grid; ``window_steps`` sampling steps make one window;
    ``rule`` is applied inside the window (rho = 1 outside); ``only`` restricts the windows computed to
    these indices (for partial runs; None: every window). Validated on construction as far as possible
    without the network; whether ``nfe`` fits the network's grid and ``only`` names existing windows is
    checked by :func:`select_windows` (called first by :func:`run_windows`).
    """

    sampler: str = "heun"
    nfe: int = 9
    window_steps: int = 1
    rule: str = "const:0.7"
    only: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "nfe", _checked_nfe(self.sampler, self.nfe))
        object.__setattr__(self, "window_steps", integer(self.window_steps, minimum=1, what="window_steps",
                                                          meaning="sampling steps per window"))
        canonical_rules([self.rule])  # InputError naming the rule if it cannot be read
        if self.only is not None:
            object.__setattr__(self, "only", _window_indices(self.only))

    @property
    def canonical_rule(self) -> str:
        """``rule`` in canonical form (its identity in stored runs)."""
        return canonical_rules([self.rule])[0]


def _checked_nfe(sampler: str, nfe: int) -> int:
    """``nfe`` as an int, after checking that ``sampler`` exists and can use exactly ``nfe`` evaluations."""
    SamplingSpec(sampler, nfe=nfe)  # a known sampler and an NFE it can hit on its grid
    return int(nfe)


def _window_indices(only: Any) -> tuple[int, ...]:
    """``only`` as a non-empty tuple of window indices >= 0 (InputError naming the setting otherwise)."""
    try:
        vals = tuple(only)
        ok = bool(vals) and all(not isinstance(v, bool) and operator.index(v) >= 0 for v in vals)
    except TypeError:
        ok = False
    if not ok:
        raise InputError(f"only must be a non-empty sequence of window indices (integers >= 0), or None for every "
                         f"window; got {only!r}")
    return tuple(operator.index(v) for v in vals)


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


def select_windows(net: nn.Module, config: WindowsConfig, grid: str = "edm") -> tuple[list[float], list[StepWindow]]:
    """The sampler's sigma grid on ``net`` and the windows to compute (all, or those in ``config.only``).

    Raises InputError before any sampling if ``config.nfe`` cannot be used on the grid or ``only`` names a
    window the grid does not have.
    """
    sigmas = check_sampling(net, config.sampler, config.nfe, grid)
    wins = step_windows(sigmas, config.window_steps, config.canonical_rule)
    if config.only is not None:
        bad = sorted(set(config.only) - {w.index for w in wins})
        if bad:
            raise InputError(f"window indices {bad} do not exist: the grid has {len(wins)} windows "
                             f"(0..{len(wins) - 1})")
        wins = [w for w in wins if w.index in set(config.only)]
    return sigmas, wins


def run_windows(net: nn.Module, setup: FidSetup, config: WindowsConfig, *, store: Store | None = None,
                progress: bool = False) -> AnalysisResult:
    """FID with ``config.rule`` applied in one window of ``config.window_steps`` steps at a time (seed 003, Fig. 7).

    Rows: the untouched network (``window = none``), the rule in every step (``all``) and one row per
    window, with the mean FID over the seed sets, its 95% t interval and the paired difference to
    the untouched network. ``config.only`` restricts the windows computed (indices; for partial runs).
    """
    sigmas, wins = select_windows(net, config, setup.grid)
    inner = config.canonical_rule
    rules = ["none", inner, *(w.rule for w in wins)]
    est = fid_estimates(net, setup, sampler=config.sampler, nfe=config.nfe, rules=rules, store=store,
                        progress=progress)
    rows = _window_rows(est, inner, wins, sigmas)
    result_config = {**sampler_fields(config.sampler), "nfe": config.nfe, "steps": len(sigmas) - 1,
                     "window_steps": config.window_steps, "rule": inner, "windows": [w.index for w in wins],
                     **setup.config()}
    return AnalysisResult(NAME, result_config, rows, _summary(rows, est, inner), _notes(config, setup, sigmas))


def _window_rows(est: dict[str, Estimate], inner: str, wins: Sequence[StepWindow],
                 sigmas: Sequence[float]) -> list[dict[str, Any]]:
    """One row for the untouched network, one for the rule in every step, one per window."""
    base = est["none"]
    entries = [("none", "-", sigmas[0], sigmas[-2], "none"),
               ("all", _steps(0, len(sigmas) - 2), sigmas[0], sigmas[-2], inner),
               *((str(w.index), _steps(w.first_step, w.last_step), w.sigma_start, w.sigma_end, w.rule) for w in wins)]
    rows = []
    for label, steps, start, end, rule in entries:
        d = paired_difference(est[rule], base)
        rows.append({"window": label, "steps": steps, "sigma_start": start, "sigma_end": end, "rule": rule,
                     **estimate_columns(est[rule]), **estimate_columns(d, "diff"),
                     "vs_none": "-" if label == "none" else significant(d)})
    return rows


def _summary(rows: list[dict[str, Any]], est: dict[str, Estimate], inner: str) -> dict[str, Any]:
    """FID untouched and tuned throughout, and the window with the lowest FID."""
    summary: dict[str, Any] = {"fid_none": est["none"].mean, "fid_all": est[inner].mean}
    win_rows = rows[2:]
    if win_rows:
        best = min(win_rows, key=lambda row: row["fid"])
        summary.update({"best_window": best["window"],
                        "best_window_sigmas": f"{best['sigma_start']:.4g}..{best['sigma_end']:.4g}",
                        "best_window_fid": best["fid"], "best_window_diff": best["diff"]})
    return summary


def _notes(config: WindowsConfig, setup: FidSetup, sigmas: Sequence[float]) -> list[str]:
    return [
        f"{config.sampler}, NFE {config.nfe} ({len(sigmas) - 1} steps on the {setup.grid} grid); windows of "
        f"{config.window_steps} step(s); the rule `{config.canonical_rule}` only for sigma inside the window, "
        "rho = 1 outside (seed 003, Fig. 7: 13 windows of 4 steps on EDM ImageNet-64).",
        "A window covers the grid sigmas at which its steps start (sigma_start..sigma_end); Heun's corrector at "
        "sigma_{i+1} belongs to the window of step i+1.",
        setup.note(),
    ]


def _steps(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"
