"""``skiptune analyze windows``: options, and the call of :func:`skiptune.analysis.windows.run_windows`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.scoring import check_sampling
from skiptune.analysis.windows import run_windows, step_windows
from skiptune.cli.analyses._fid import add_fid_arguments, setup_from_args
from skiptune.core.errors import InputError


def add_arguments(p) -> None:
    add_fid_arguments(p, sampler="heun", nfe=9)
    p.add_argument("--window-steps", type=int, default=1, help="sampling steps per window (default 1; paper 4)")
    p.add_argument("--rule", default="const:0.7", help="rule applied inside the window (default const:0.7)")
    p.add_argument("--only", default=None, help="comma-separated window indices to compute (default all)")


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    only = None
    if args.only:
        try:
            only = [int(v) for v in args.only.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--only must be comma-separated window indices, got {args.only!r}") from None
    step_windows(check_sampling(ctx.net, args.sampler, args.nfe, args.grid), args.window_steps, args.rule)
    return run_windows(ctx.net, setup_from_args(args, ctx), sampler=args.sampler, nfe=args.nfe,
                       window_steps=args.window_steps, rule=args.rule, only=only, store=ctx.store)
