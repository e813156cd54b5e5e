"""``skiptune analyze grid``: options, and the call of :func:`skiptune.analysis.grid.run_grid`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.grid import GridConfig, run_grid
from skiptune.core.errors import InputError


def add_arguments(p) -> None:
    p.add_argument("--samplers", default="heun", help="comma-separated samplers (default heun)")
    p.add_argument("--nfe", default="9", help="comma-separated NFEs (default 9)")
    p.add_argument("--rules", default="none;const:0.7", help="';'-separated rules (untouched always included)")
    p.add_argument("--seeds", default="0-31", help="the seeds of every panel (default 0-31)")
    p.add_argument("--grid", default="edm")
    p.add_argument("--mode", default="concat", choices=["concat", "residual", "norm"])
    p.add_argument("--ncols", type=int, default=8)
    p.add_argument("--class-label", type=int, default=None, help="one class for all samples (conditional nets)")
    p.add_argument("--batch", type=int, default=250)


def config_from_args(args, ctx: AnalysisContext) -> GridConfig:
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    try:
        nfes = [int(v) for v in args.nfe.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--nfe must be comma-separated integers, got {args.nfe!r}") from None
    if not samplers or not nfes:
        raise InputError("give at least one sampler (--samplers) and one NFE (--nfe)")
    return GridConfig(samplers=samplers, nfes=nfes, rules=args.rules, seeds=args.seeds, grid=args.grid,
                      mode=args.mode, ncols=args.ncols, class_label=args.class_label, batch=args.batch,
                      device=ctx.device)


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    config = config_from_args(args, ctx)
    return run_grid(ctx.net, ctx.out, config, store=ctx.store, progress=ctx.progress)
