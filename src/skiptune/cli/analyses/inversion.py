"""``skiptune analyze inversion``: options, and the call of :func:`skiptune.analysis.inversion.run_inversion`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.inversion import InversionConfig, run_inversion
from skiptune.core.errors import InputError


def add_arguments(p) -> None:
    p.add_argument("--rules", default="none;layer:0.7;const:0.7",
                   help="';'-separated rules applied during inversion (untouched always included)")
    p.add_argument("--sampler", default="heun", help="deterministic solver for the inversion (default heun)")
    p.add_argument("--steps", type=int, default=9, help="inversion steps from sigma_min to sigma_max (paper: 9)")
    p.add_argument("--grid", default="edm")
    p.add_argument("--mode", default="concat", choices=["concat", "residual", "norm"])
    p.add_argument("--split", default="auto", choices=["auto", "test", "train"],
                   help="real images: held-out split (auto: test if the data set has one, else train)")
    p.add_argument("--seeds", default="0-99", help="first noise seed set; its size is the number of images per chunk")
    p.add_argument("--seed-sets", type=int, default=3, help="number of image chunks / noise seed sets (default 3)")
    p.add_argument("--rbf-scales", default="0.5,1,2", help="RBF bandwidths as multiples of the median distance")
    p.add_argument("--biased", action="store_true", help="biased MMD^2 (V-statistic) instead of eq. 6")
    p.add_argument("--batch", type=int, default=250)


def _dataset(args, ctx: AnalysisContext):
    """The real images of ``--split`` and the split they come from (``auto``: test if there is one, else train)."""
    if args.split == "auto":
        try:
            return ctx.dataset("test"), "test"
        except ValueError:
            return ctx.dataset("train"), "train"
    try:
        return ctx.dataset(args.split), args.split
    except ValueError as exc:
        raise InputError(f"{exc} (pass --split train)") from None


def config_from_args(args, ctx: AnalysisContext, split: str | None = None) -> InversionConfig:
    """The settings of the command line; ``data_id`` is ``DATA:SPLIT`` (``--split`` until the split is known)."""
    try:
        scales = [float(v) for v in args.rbf_scales.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--rbf-scales must be comma-separated numbers, got {args.rbf_scales!r}") from None
    return InversionConfig(rules=args.rules, sampler=args.sampler, steps=args.steps, grid=args.grid, seeds=args.seeds,
                           seed_sets=args.seed_sets, rbf_scales=scales, unbiased=not args.biased, mode=args.mode,
                           batch=args.batch, device=ctx.device, data_id=f"{ctx.data}:{split or args.split}")


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    config_from_args(args, ctx)  # refuse bad options before any data is loaded
    data, split = _dataset(args, ctx)
    res = run_inversion(ctx.net, data.images, data.labels, config_from_args(args, ctx, split), store=ctx.store,
                        progress=ctx.progress)
    if split == "train":
        res.notes.append("The images come from the training split (the data set has no held-out split).")
    return res
