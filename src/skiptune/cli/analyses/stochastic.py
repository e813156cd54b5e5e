"""``skiptune analyze stochastic``: options, read into a :class:`~skiptune.analysis.stochastic.StochasticConfig`
for :func:`skiptune.analysis.stochastic.run_stochastic`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.stochastic import SAMPLER, StochasticConfig, run_stochastic, stochastic_plan
from skiptune.cli import parse_list
from skiptune.cli.analyses._fid import add_fid_arguments, setup_from_args


def add_arguments(p) -> None:
    add_fid_arguments(p, sampler=SAMPLER, nfe=9, sampler_choice=False)
    p.add_argument("--churn", default="0,1,2", help="comma-separated S_churn values (default 0,1,2)")
    p.add_argument("--rules", default="none;const:0.85;const:0.7",
                   help="';'-separated rules (the untouched network is always included)")
    p.add_argument("--s-tmin", type=float, default=None, help="EDM S_tmin (default 0)")
    p.add_argument("--s-tmax", type=float, default=None, help="EDM S_tmax (default inf)")
    p.add_argument("--s-noise", type=float, default=None, help="EDM S_noise (default 1)")


def config_from_args(args) -> StochasticConfig:
    return StochasticConfig(nfe=args.nfe, churns=parse_churns(args.churn), rules=parse_rules(args.rules),
                            s_tmin=args.s_tmin, s_tmax=args.s_tmax, s_noise=args.s_noise)


def parse_churns(text: str) -> tuple[float, ...]:
    """``--churn 0,1,2`` -> ``(0.0, 1.0, 2.0)`` (UsageError naming the flag if it is not a list of numbers)."""
    return parse_list(text, float, flag="--churn", what="numbers")


def parse_rules(text: str) -> tuple[str, ...]:
    """``--rules 'none;const:0.85'`` -> ``('none', 'const:0.85')``."""
    return parse_list(text, flag="--rules", what="rules such as 'const:0.85;const:0.7'", sep=";")


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    config = config_from_args(args)
    stochastic_plan(ctx.net, config, args.grid)  # fails on the grid before the scorer loads its reference
    return run_stochastic(ctx.net, setup_from_args(args, ctx), config, store=ctx.store)
