"""``skiptune analyze order``: options, read into an :class:`~skiptune.analysis.order.OrderConfig` for
:func:`skiptune.analysis.order.run_order`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.order import AXES, OrderConfig, order_plan, run_order
from skiptune.cli import parse_list
from skiptune.cli.analyses._fid import add_fid_arguments, setup_from_args


def add_arguments(p) -> None:
    add_fid_arguments(p, sampler="heun", nfe=9)
    p.add_argument("--rho0", default="0.7", help="comma-separated rho_0 values (default 0.7; paper EDM 0.78)")
    p.add_argument("--axes", default="sigma,step,time",
                   help=f"comma-separated readings of the paper's 'time 0 to T', of {', '.join(AXES)} (default "
                        "sigma,step,time; time = the network's own diffusion time: log sigma for EDM/VE, VP time "
                        "for VP networks)")


def config_from_args(args) -> OrderConfig:
    return OrderConfig(sampler=args.sampler, nfe=args.nfe, rho0=parse_numbers("--rho0", args.rho0),
                       axes=parse_list(args.axes, str, flag="--axes", what="axis names"))


def parse_numbers(flag: str, text: str) -> tuple[float, ...]:
    """``0.7,1`` -> ``(0.7, 1.0)``; UsageError naming ``flag`` if it is not a non-empty list of numbers."""
    return parse_list(text, float, flag=flag, what="numbers")


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    config = config_from_args(args)
    order_plan(ctx.net, config, args.grid)  # fails on the grid or the model time before the scorer loads
    return run_order(ctx.net, setup_from_args(args, ctx), config, store=ctx.store)
