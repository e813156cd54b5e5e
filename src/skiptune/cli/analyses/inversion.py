"""``skiptune analyze inversion``: options, and the call of :func:`skiptune.analysis.inversion.run_inversion`."""

from __future__ import annotations

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.inversion import run_inversion
from skiptune.analysis.scoring import canonical_rules
from skiptune.core.errors import InputError
from skiptune.sampling import DETERMINISTIC


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


def run(args, ctx: AnalysisContext) -> AnalysisResult:
    try:
        scales = [float(v) for v in args.rbf_scales.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--rbf-scales must be comma-separated numbers, got {args.rbf_scales!r}") from None
    rules = canonical_rules(args.rules)
    if args.sampler not in DETERMINISTIC:
        raise InputError(f"--sampler must be deterministic for inversion: one of {sorted(DETERMINISTIC)}")
    split = args.split
    if split == "auto":
        try:
            data = ctx.dataset("test")
            split = "test"
        except ValueError:
            data, split = ctx.dataset("train"), "train"
    else:
        try:
            data = ctx.dataset(split)
        except ValueError as exc:
            raise InputError(f"{exc} (pass --split train)") from None
    res = run_inversion(ctx.net, data.images, labels=data.labels, rules=rules, sampler=args.sampler, steps=args.steps,
                        grid=args.grid, seeds=args.seeds, seed_sets_count=args.seed_sets, rbf_scales=scales,
                        unbiased=not args.biased, mode=args.mode, batch=args.batch, device=ctx.device,
                        data_id=f"{ctx.data}:{split}", store=ctx.store, progress=ctx.progress)
    if split == "train":
        res.notes.append("The images come from the training split (the data set has no held-out split).")
    return res
