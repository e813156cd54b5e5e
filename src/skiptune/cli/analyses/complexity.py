"""``skiptune analyze complexity``: options, and the call of :func:`skiptune.analysis.complexity.run_complexity`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.complexity import ESTIMATORS, EXACT_MAX_DIM, ComplexityConfig, run_complexity
from skiptune.analysis.context import AnalysisContext
from skiptune.train.data import check_count


def add_arguments(p) -> None:
    p.add_argument("--n", type=int, default=4, help="number of real images (default 4)")
    p.add_argument("--split", default="test", help="data split (default test)")
    p.add_argument("--rules", default="const:0.6:1.2:0.2",
                   help="rules separated by ';', ranges as in `skiptune sweep` (default const:0.6:1.2:0.2, "
                        "i.e. rho 0.6, 0.8, 1, 1.2 at every site)")
    p.add_argument("--sigmas", default="80,5", help="noise levels (default 80,5 as in Table 1)")
    p.add_argument("--estimator", choices=ESTIMATORS, default="auto",
                   help=f"exact Jacobian, Hutchinson estimate, or auto (exact up to {EXACT_MAX_DIM} input dims)")
    p.add_argument("--probes", type=int, default=32, help="Rademacher probes per image (hutchinson)")
    p.add_argument("--chunk", type=int, default=256, help="vector-Jacobian products per batch")
    p.add_argument("--seed", type=int, default=0)


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    # the settings are checked here, before the model and the data load
    config = ComplexityConfig(rules=args.rules, sigmas=args.sigmas, estimator=args.estimator, probes=args.probes,
                              seed=args.seed, chunk=args.chunk)
    check_count(args.n, "--n")
    ds = ctx.dataset(args.split).head(args.n, what="--n")  # more than the split holds: refused, not cut short
    return run_complexity(ctx.net, ds.images, config, labels=ds.labels, store=ctx.store, progress=ctx.progress,
                          model_id=ctx.fingerprint)
