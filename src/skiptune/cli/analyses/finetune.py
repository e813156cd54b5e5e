"""``skiptune analyze finetune``: options, and the call of :func:`skiptune.analysis.finetune.run_finetune`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.finetune import (
    LOSSES,
    REDUCTIONS,
    FidConfig,
    FinetuneConfig,
    FullFinetuneConfig,
    RhoFitConfig,
    run_finetune,
)
from skiptune.core.errors import InputError
from skiptune.train.data import check_count


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(p) -> None:
    p.add_argument("--n", type=int, default=None, help="training images (default: the whole train split)")
    p.add_argument("--params", default="raw,sigmoid", help="rho parametrisations to fit: raw,sigmoid (or empty)")
    p.add_argument("--rho-loss", choices=LOSSES, default="feature", help="loss of the rho fits (default feature)")
    p.add_argument("--rho-steps", type=int, default=50)
    p.add_argument("--rho-batch", type=int, default=32)
    p.add_argument("--rho-lr", type=float, default=0.02)
    p.add_argument("--init-raw", type=float, default=1.0, help="initial rho of the raw fit (default 1)")
    p.add_argument("--init-sigmoid", type=float, default=0.9, help="initial rho of the sigmoid fit (default 0.9)")
    p.add_argument("--sigmoid-max", type=float, default=1.0, help="rho = MAX * sigmoid(theta) (paper: 1)")
    p.add_argument("--full-steps", type=int, default=60, help="full fine-tuning steps (0 skips it; default 60)")
    p.add_argument("--full-checkpoints", default=None, help="steps at which to measure FID (default half and end)")
    p.add_argument("--full-batch", type=int, default=32)
    p.add_argument("--full-lr", type=float, default=2e-4)
    p.add_argument("--feature-weight", type=float, default=1.0, help="weight of L_feature in the hybrid loss")
    p.add_argument("--weighting", choices=("edm", "none"), default="edm", help="loss weighting over sigma")
    p.add_argument("--reduction", choices=REDUCTIONS, default="mean",
                   help="squared errors averaged over each space's dimensions (default) or summed (the paper's "
                        "||.||^2; changes the pixel/feature balance of the hybrid loss)")
    p.add_argument("--compare-rules", default="const:0.7", help="hand-set rules to compare, ';'-separated (or empty)")
    p.add_argument("--sampler", default="heun")
    p.add_argument("--nfe", default="9", help="comma-separated NFEs for the FIDs (default 9, Table 11's 5 steps)")
    p.add_argument("--seeds", default="0-99", help="seeds of the first FID seed set (default 0-99)")
    p.add_argument("--seed-sets", type=int, default=3, help="disjoint seed sets (default 3)")
    p.add_argument("--fid-batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="seed of the training draws")


def config_from_args(args) -> FinetuneConfig:
    """The analysis settings named by the options (``--feature-weight`` weighs L_feature in both the hybrid rho
    loss and the full fine-tuning)."""
    rho = RhoFitConfig(params=tuple(p.strip() for p in args.params.split(",") if p.strip()), loss=args.rho_loss,
                       steps=args.rho_steps, batch=args.rho_batch, lr=args.rho_lr, init_raw=args.init_raw,
                       init_sigmoid=args.init_sigmoid, sigmoid_max=args.sigmoid_max,
                       feature_weight=args.feature_weight)
    full = FullFinetuneConfig(steps=args.full_steps,
                              checkpoints=tuple(_ints(args.full_checkpoints)) if args.full_checkpoints else None,
                              batch=args.full_batch, lr=args.full_lr, feature_weight=args.feature_weight)
    fid = FidConfig(sampler=args.sampler, nfes=tuple(_ints(args.nfe)), seeds=args.seeds, seed_sets=args.seed_sets,
                    batch=args.fid_batch,
                    compare_rules=tuple(r.strip() for r in args.compare_rules.split(";") if r.strip()))
    return FinetuneConfig(weighting=args.weighting, seed=args.seed, reduction=args.reduction, rho=rho, full=full,
                          fid=fid)


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    config = config_from_args(args)  # checked before the model and data are loaded
    if args.n is not None:
        check_count(args.n, "--n")
    ds = ctx.dataset("train").head(args.n, what="--n")  # more than the split holds: refused, not cut short
    return run_finetune(ctx.net, ds.images, config, scorer=ctx.scorer, labels=ds.labels, store=ctx.store,
                        progress=ctx.progress, model_id=ctx.fingerprint)
