"""``skiptune analyze sweep``: options, and the call of :func:`skiptune.analysis.sweep.run_sweep`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.sweep import SweepConfig, run_sweep
from skiptune.core.errors import InputError


def add_arguments(p) -> None:
    p.add_argument("--samplers", default=None, help="comma-separated samplers to include (default all)")
    p.add_argument("--nfe", default=None, help="comma-separated NFEs to include (default all)")
    p.add_argument("--all-rules", action="store_true",
                   help="also tabulate rules that are not on a rho axis (ramps, windows, products)")


def config_from_args(args, ctx: AnalysisContext) -> SweepConfig:
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()] if args.samplers else []
    try:
        nfes = [int(v) for v in args.nfe.split(",") if v.strip()] if args.nfe else []
    except ValueError:
        raise InputError(f"--nfe must be comma-separated integers, got {args.nfe!r}") from None
    return SweepConfig(features=ctx.features, samplers=samplers, nfes=nfes, all_rules=args.all_rules)


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    config = config_from_args(args, ctx)
    return run_sweep(ctx.net, config, store=ctx.store)
