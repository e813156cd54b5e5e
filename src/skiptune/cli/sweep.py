"""``skiptune sweep`` and ``skiptune search``: rho grids and automatic rho search, stored and resumable."""

from __future__ import annotations

from pathlib import Path

from skiptune.cli import (
    DEFAULT_FEATURES,
    WEIGHTS_FLAG,
    UsageError,
    add_model_options,
    check_db,
    check_weights,
    open_from_args,
    parse_list,
    scoring_features,
    with_flags,
)
from skiptune.cli.sample import add_cache_option, add_end_option, add_guidance_option, cache_from_args
from skiptune.core.errors import MissingFileError


def add_scoring_options(p) -> None:
    p.add_argument("--features", default=None,
                   help="feature network for FID (registered name; default: the one recorded in --ref statistics, "
                        f"else {DEFAULT_FEATURES})")
    p.add_argument("--weights", default=None, help="weights file of the feature network")
    p.add_argument("--ref", required=True, metavar="REF.npz|DATA",
                   help="reference statistics (.npz from `skiptune ref`) or a data set: digits, shapes, a folder "
                        "or an .npz of images (its training split)")
    p.add_argument("--db", default="runs/results.sqlite", help="results store (SQLite; created if missing)")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def load_scorer(args, *, progress: bool = False, resolution: int | tuple[int, int] | None = None):
    """The :class:`~skiptune.experiment.Scorer` of ``--features/--weights/--ref`` (``--features`` defaults to the
    network recorded in ``--ref`` statistics); a reference of images at another ``resolution`` than the model's,
    or of another resize policy, is refused."""
    from skiptune.experiment import Scorer

    try:
        return Scorer.load(scoring_features(args.features, args.ref), args.ref, weights=args.weights,
                           device=args.device, progress=progress, resolution=resolution)
    except MissingFileError as exc:
        raise with_flags(exc, WEIGHTS_FLAG) from None


def image_resolution(net, decoder=None) -> int | tuple[int, int] | None:
    """The resolution of the images a network's samples are scored as (decoded by ``decoder`` for a latent
    model); None for a latent model without a decoder (which scoring refuses anyway)."""
    from skiptune.core.denoiser import DenoiserInfo

    info = DenoiserInfo.of(net)
    if decoder is not None:
        from skiptune.io.vae import check_decoder_fits

        _, h, w = check_decoder_fits(decoder, info.shape)
        return h, w
    if getattr(net, "latent_scale_factor", None) is not None:
        return None
    return info.img_resolution


def register(sub) -> None:
    p = sub.add_parser("sweep", help="FID over a grid of rules x samplers x NFE x seed sets (resumable)",
                       description="Generate and score every (sampler, NFE, rule, seed set); results go to the "
                                   "store, so an interrupted sweep resumes. Rules are ';'-separated; "
                                   "layer:LO:HI:STEP is a range of rho_bottom.")
    add_model_options(p)
    p.add_argument("--rules", default="none;layer:0.5:1.5:0.1")
    p.add_argument("--samplers", default="heun,unipc")
    p.add_argument("--nfe", default="5,9,19")
    p.add_argument("--seeds", default="0-249", help="first seed set; further sets are shifted copies")
    p.add_argument("--seed-sets", type=int, default=3)
    p.add_argument("--mode", default="concat", choices=["concat", "residual", "norm"])
    p.add_argument("--grid", default="edm")
    add_end_option(p)
    add_guidance_option(p)
    add_cache_option(p)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="network precision (recorded in each run's config)")
    p.add_argument("--out", default=None, help="folder for the FID-vs-rho plot, summary CSV and image grids")
    p.add_argument("--grid-seeds", default="0-31", help="seeds of the baseline-vs-best image grids (with --out)")
    add_scoring_options(p)
    p.set_defaults(func=run_sweep_cmd)

    p = sub.add_parser("search", help="automatic rho search (below and above 1) with a confidence interval",
                       description="Coarse grid with few samples, refinement with growing sample counts, final "
                                   "estimate over seed sets; every evaluation is cached in the store.")
    add_model_options(p)
    p.add_argument("--sampler", default="heun")
    p.add_argument("--nfe", type=int, default=9)
    add_end_option(p)
    add_guidance_option(p)
    add_cache_option(p)
    p.add_argument("--template", default="layer:{rho}", help="rule with one {rho}, e.g. ramp:down:{rho}")
    p.add_argument("--lo", type=float, default=0.5)
    p.add_argument("--hi", type=float, default=1.5)
    p.add_argument("--step", type=float, default=0.05)
    p.add_argument("--coarse-step", type=float, default=0.1)
    p.add_argument("--n-max", type=int, default=1000, help="samples per evaluation at the final rung")
    p.add_argument("--seed-sets", type=int, default=3, help="seed sets of the final estimate")
    p.add_argument("--select-sets", type=int, default=1,
                   help="seed sets whose mean FID the final rung selects on (3 follows the averaged curve of a "
                        "3-set grid, at 3x the final rung's cost)")
    add_scoring_options(p)
    p.set_defaults(func=run_search_cmd)


def run_sweep_cmd(args) -> int:
    from contextlib import nullcontext

    from skiptune.distributed import init_distributed
    from skiptune.experiment import ModelRef, SamplingSpec, open_store
    from skiptune.experiment.generate import check_guidance
    from skiptune.io.outputs import check_writable_folder
    from skiptune.report.plots import plot_fid_vs_rho, write_best_grids
    from skiptune.report.tables import sweep_summary, write_sweep_csv
    from skiptune.runs.sweep import SweepSpec, expand_rules, paired_to_baseline, run_sweep, seed_sets
    from skiptune.skip import check_cache

    if args.out:  # a folder the results cannot go to fails before the sweep, not after it
        check_writable_folder(args.out, "--out")
    spec = SweepSpec(rules=expand_rules(args.rules),
                     samplers=list(parse_list(args.samplers, flag="--samplers", what="sampler names")),
                     nfes=list(parse_list(args.nfe, int, flag="--nfe", what="integers")),
                     seed_sets=seed_sets(args.seeds, args.seed_sets), mode=args.mode, grid=args.grid,
                     batch=args.batch, precision=args.precision, end=args.end, guidance=args.guidance,
                     cache=cache_from_args(args))
    for s in spec.samplers:  # validate every sampler/NFE pair before any work
        for n in spec.nfes:
            SamplingSpec(s, nfe=n, grid=args.grid, end=args.end, guidance=args.guidance)
    d = init_distributed(args.device)  # one process unless started by torchrun
    if d.is_main:  # a store that cannot be used fails before models and references are loaded
        check_db(args.db)
    check_weights(args.weights)
    scoring_features(args.features, args.ref)  # a --ref file that is no statistics or images fails here too
    loaded = open_from_args(args)
    net = loaded.net
    check_guidance(net, spec.guidance)  # before the reference is computed
    check_cache(net, spec.cache)
    scorer = load_scorer(args, progress=not args.no_progress and d.is_main, resolution=image_resolution(net))
    # only rank 0 opens the store: no shared file system or file locking across nodes is needed
    with open_store(args.db) if d.is_main else nullcontext() as store:
        rows = run_sweep(net, spec, store=store, scorer=scorer, model=ModelRef.of(loaded),
                         progress=not args.no_progress, device=str(d.device), dist=d)
    if not d.is_main:
        return 0
    diffs = paired_to_baseline(rows)
    print(sweep_summary(rows, diffs, args.seed_sets))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plot_fid_vs_rho(rows, out / "fid_vs_rho.png", diffs=diffs)
        write_sweep_csv(rows, diffs, out / "sweep.csv")
        grids = write_best_grids(net, rows, out, seeds=args.grid_seeds, grid=args.grid, mode=args.mode,
                                 device=str(d.device), end=args.end, cache=spec.cache)
        print(f"plot, CSV and {len(grids)} baseline-vs-best image grids (seeds {args.grid_seeds}) in {out}")
    return 0


def run_search_cmd(args) -> int:
    from skiptune.experiment import ModelRef, Point, SamplingSpec, open_store, score_stored
    from skiptune.experiment.generate import check_guidance
    from skiptune.runs.search import search_rho
    from skiptune.skip import check_cache

    sampling = SamplingSpec(args.sampler, nfe=args.nfe, end=args.end,
                            guidance=args.guidance)  # a sampler/NFE pair that cannot work fails here
    cache = cache_from_args(args)
    check_db(args.db)  # a store that cannot be used fails before models and references are loaded
    check_weights(args.weights)
    scoring_features(args.features, args.ref)
    loaded = open_from_args(args)
    net = loaded.net
    check_guidance(net, sampling.guidance)  # before the reference is computed
    check_cache(net, cache)
    scorer = load_scorer(args, resolution=image_resolution(net))
    base = Point(ModelRef.of(loaded), sampling, "none", "0", scorer.spec(), batch=args.batch, cache=cache)

    def point(rule: str, n: int, seed_set: int) -> Point:
        # seed set k holds seeds k*n_max .. k*n_max + n_max - 1 and rungs use its first n: the final rung's
        # sets are those of `skiptune sweep --seeds 0-{n_max - 1} --seed-sets S`, whose runs it shares
        first = seed_set * args.n_max
        return base.with_rule(rule).with_seeds(f"{first}-{first + n - 1}")

    def show(ev):
        if not args.no_progress:
            print(f"  {ev.stage:<10} {ev.rule:<20} n={ev.n_samples:<6} set {ev.seed_set}  FID {ev.value:.3f}"
                  + (" (cached)" if ev.cached else ""), flush=True)

    with open_store(args.db) as store:
        def objective(rho: float, n: int, seed_set: int) -> tuple[float, bool]:
            scored = score_stored(net, point(args.template.format(rho=f"{rho:g}"), n, seed_set), scorer, store,
                                  device=args.device)
            return scored.fid, scored.cached

        try:
            res = search_rho(objective, n_max=args.n_max, template=args.template, lo=args.lo, hi=args.hi,
                             step=args.step, coarse_step=args.coarse_step, seed_sets=args.seed_sets,
                             select_sets=args.select_sets, baseline=1.0 if args.lo <= 1.0 <= args.hi else None,
                             callback=show)
        except KeyError as exc:
            raise UsageError(f"--template must contain {{rho}}: {exc}") from None
    print(res.summary())
    return 0
