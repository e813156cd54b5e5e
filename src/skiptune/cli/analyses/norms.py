"""``skiptune analyze norms``: options, and the call of :func:`skiptune.analysis.norms.run_norms`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.norms import NormsConfig, run_norms
from skiptune.train.data import check_count


def add_arguments(p) -> None:
    p.add_argument("--n", type=int, default=64, help="number of real images (held-out split; default 64)")
    p.add_argument("--split", default="test", help="data split of the images (default test)")
    p.add_argument("--sigmas", default="edm:10",
                   help="noise levels: edm:N[:LO:HI] (EDM sampler grid), lognormal:K (EDM training quantiles) "
                        "or a list 80,5,0.5 (default edm:10)")
    p.add_argument("--rule", default="none", help="Skip-Tuning rule attached while measuring (default none)")
    p.add_argument("--seed", type=int, default=0, help="first noise seed (image j uses seed + j)")
    p.add_argument("--batch", type=int, default=64)


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    # the settings are checked here, before the model and the data load
    config = NormsConfig(sigmas=args.sigmas, seed=args.seed, rule=args.rule, batch=args.batch)
    check_count(args.n, "--n")
    ds = ctx.dataset(args.split).head(args.n, what="--n")  # more than the split holds: refused, not cut short
    return run_norms(ctx.net, ds.images, config, labels=ds.labels, store=ctx.store, progress=ctx.progress,
                     model_id=ctx.fingerprint)
