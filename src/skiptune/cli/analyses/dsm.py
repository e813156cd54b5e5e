"""``skiptune analyze dsm``: options, and the call of :func:`skiptune.analysis.dsm.run_dsm`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.dsm import DsmConfig, run_dsm
from skiptune.train.data import check_count


def add_arguments(p) -> None:
    p.add_argument("--n", type=int, default=256, help="held-out images (default 256)")
    p.add_argument("--split", default="test", help="data split (default test)")
    p.add_argument("--rules", default="none;const:0.7",
                   help="baseline rule first, then the rules to compare, separated by ';' (default none;const:0.7)")
    p.add_argument("--sigmas", default="edm:5", help="noise levels (default edm:5, the five of Table 9)")
    p.add_argument("--feature-nets", default=None,
                   help="comma-separated registered feature networks for the feature-space losses (default: "
                        "--features); e.g. digits-classifier,inception-v3")
    p.add_argument("--no-lognormal", action="store_true", help="skip the EDM-weighted log-normal aggregate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=100)


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    from skiptune.metrics import get_extractor

    # the settings are checked here, before the model and the data load
    config = DsmConfig(rules=args.rules, sigmas=args.sigmas, lognormal=not args.no_lognormal, seed=args.seed,
                       batch=args.batch)
    check_count(args.n, "--n")
    names = [s.strip() for s in (args.feature_nets or ctx.features).split(",") if s.strip()]
    exts = [ctx.extractor if name == ctx.features else get_extractor(name) for name in names]
    ds = ctx.dataset(args.split).head(args.n, what="--n")  # more than the split holds: refused, not cut short
    return run_dsm(ctx.net, ds.images, config, extractors=exts, labels=ds.labels, store=ctx.store,
                   progress=ctx.progress, model_id=ctx.fingerprint)
