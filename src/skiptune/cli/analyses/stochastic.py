"""``skiptune analyze stochastic``: options, and the call of :func:`skiptune.analysis.stochastic.run_stochastic`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.scoring import canonical_rules, check_sampling
from skiptune.analysis.stochastic import SAMPLER, check_churns, run_stochastic
from skiptune.cli.analyses._fid import add_fid_arguments, setup_from_args
from skiptune.core.errors import InputError


def add_arguments(p) -> None:
    add_fid_arguments(p, sampler=SAMPLER, nfe=9, sampler_choice=False)
    p.add_argument("--churn", default="0,1,2", help="comma-separated S_churn values (default 0,1,2)")
    p.add_argument("--rules", default="none;const:0.85;const:0.7",
                   help="';'-separated rules (the untouched network is always included)")
    p.add_argument("--s-tmin", type=float, default=None, help="EDM S_tmin (default 0)")
    p.add_argument("--s-tmax", type=float, default=None, help="EDM S_tmax (default inf)")
    p.add_argument("--s-noise", type=float, default=None, help="EDM S_noise (default 1)")


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    try:
        churns = [float(v) for v in args.churn.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--churn must be comma-separated numbers, got {args.churn!r}") from None
    steps = len(check_sampling(ctx.net, SAMPLER, args.nfe, args.grid)) - 1
    check_churns(churns, steps)
    rules = canonical_rules(args.rules)
    return run_stochastic(ctx.net, setup_from_args(args, ctx), nfe=args.nfe, churns=churns, rules=rules,
                          s_tmin=args.s_tmin, s_tmax=args.s_tmax, s_noise=args.s_noise, store=ctx.store)
