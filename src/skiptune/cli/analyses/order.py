"""``skiptune analyze order``: options, and the call of :func:`skiptune.analysis.order.run_order`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.order import order_rules, run_order
from skiptune.analysis.scoring import check_sampling
from skiptune.cli.analyses._fid import add_fid_arguments, setup_from_args
from skiptune.core.errors import InputError


def add_arguments(p) -> None:
    add_fid_arguments(p, sampler="heun", nfe=9)
    p.add_argument("--rho0", default="0.7", help="comma-separated rho_0 values (default 0.7; paper EDM 0.78)")
    p.add_argument("--space", default="sigma", choices=["sigma", "log"],
                   help="ramp linear in sigma (paper, default) or in log sigma")


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    try:
        rho0 = [float(v) for v in args.rho0.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--rho0 must be comma-separated numbers, got {args.rho0!r}") from None
    for r in rho0:
        order_rules(r, args.space)  # validates rho_0 > 0 before any work
    check_sampling(ctx.net, args.sampler, args.nfe, args.grid)
    return run_order(ctx.net, setup_from_args(args, ctx), sampler=args.sampler, nfe=args.nfe, rho0=rho0,
                     space=args.space, store=ctx.store)
