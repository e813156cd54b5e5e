"""``skiptune analyze windows``: options, read into a :class:`~skiptune.analysis.windows.WindowsConfig` for
:func:`skiptune.analysis.windows.run_windows`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.windows import WindowsConfig, run_windows, select_windows
from skiptune.cli import parse_list
from skiptune.cli.analyses._fid import add_fid_arguments, setup_from_args


def add_arguments(p) -> None:
    add_fid_arguments(p, sampler="heun", nfe=9)
    p.add_argument("--window-steps", type=int, default=1, help="sampling steps per window (default 1; paper 4)")
    p.add_argument("--rule", default="const:0.7", help="rule applied inside the window (default const:0.7)")
    p.add_argument("--only", default=None, help="comma-separated window indices to compute (default all)")


def config_from_args(args) -> WindowsConfig:
    return WindowsConfig(sampler=args.sampler, nfe=args.nfe, window_steps=args.window_steps, rule=args.rule,
                         only=parse_only(args.only))


def parse_only(text: str | None) -> tuple[int, ...] | None:
    """``--only 0,3,4`` -> ``(0, 3, 4)``; absent or empty -> None (every window)."""
    return parse_list(text, int, flag="--only", what="window indices (integers >= 0)") if text else None


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    config = config_from_args(args)
    select_windows(ctx.net, config, args.grid)  # fails on the grid before the scorer loads its reference
    return run_windows(ctx.net, setup_from_args(args, ctx), config, store=ctx.store)
