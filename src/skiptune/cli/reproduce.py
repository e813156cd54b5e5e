"""``skiptune reproduce``: rerun one of the paper's result tables on its public checkpoint, with one command."""

from __future__ import annotations

import warnings
from pathlib import Path

from skiptune.cli import UsageError, check_db, check_weights, open_from_args, scoring_features
from skiptune.cli.sample import add_cache_option, cache_from_args
from skiptune.cli.sweep import image_resolution, load_scorer


def register(sub) -> None:
    p = sub.add_parser(
        "reproduce", help="rerun a result table of the Skip-Tuning paper (seed 003) on its checkpoint",
        description="Run the untuned and tuned rows of one table of the paper at its sampler, NFE, guidance and rho "
                    "(from skiptune.skip.presets), plus a sanity row that reproduces the checkpoint authors' own FID, "
                    "and write the paper's FID beside the measured one (markdown, CSV, plot). Every point is one run "
                    "in the results store: a killed run resumes with nothing recomputed; under torchrun the points "
                    "are shared out to the processes. See docs/reproduce.md for the files each table needs.")
    p.add_argument("table", nargs="?", help="table number: 2, 3, 4, 5, 6, 7 or 10 (see --list)")
    p.add_argument("--list", action="store_true", help="list every table and row the presets cover, and exit")
    p.add_argument("--checkpoint", metavar="FILE", help="the public checkpoint: EDM network .pkl, U-ViT .pth, ...")
    p.add_argument("--arch", metavar="PRESET", help="architecture of a raw state dict (e.g. uvit-imagenet256-huge)")
    p.add_argument("--trust-code", action="store_true",
                   help="UNSAFE: unpickle EDM files with Python's stock loader, executing code they contain")
    p.add_argument("--family", default=None,
                   help="the model family the checkpoint is (default: recognised from its shape); needed for stand-ins")
    p.add_argument("--ref", metavar="REF.npz|DATA",
                   help="reference statistics (EDM's fid-refs .npz or `skiptune ref` output) or a data set")
    p.add_argument("--features", default=None,
                   help="feature network (default: the one recorded in --ref, else inception-v3: the paper's)")
    p.add_argument("--weights", default=None, help="weights file of the feature network")
    p.add_argument("--vae", default=None, metavar="DIR",
                   help="autoencoder folder (diffusers save_pretrained) that decodes a latent model's samples, or a "
                        "latent-diffusion .ckpt (default for a latent-diffusion --checkpoint: its own first stage)")
    p.add_argument("--vae-scale", type=float, default=None, help="latent scale of --vae (default: its config's)")
    p.add_argument("--samples", type=int, default=50000, metavar="N",
                   help="samples per seed set (the paper: 50000)")
    p.add_argument("--seed-sets", type=int, default=1,
                   help="disjoint seed sets (seeds 0..n-1, n..2n-1, ...); with 2 or more every FID gets an interval")
    p.add_argument("--rows", default=None, help="comma-separated row names to run (default: all; see --list)")
    p.add_argument("--no-sanity", action="store_true", help="skip the sanity row (the authors' own FID)")
    add_cache_option(p)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--db", default=None, help="results store (default: OUT/results.sqlite)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (rows, samples, network forwards, time from a short timing of the network "
                        "on --device) and exit")
    p.add_argument("--out", metavar="DIR", help="output folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from skiptune.runs.reproduce import tables

    if args.list:
        from skiptune.report.reproduce import list_text

        print(list_text(tables()))
        return 0
    if not args.table:
        raise UsageError("give a TABLE (e.g. 2) or --list")
    from skiptune.runs.reproduce import FAMILIES, table_rows

    names = [s.strip() for s in args.rows.split(",") if s.strip()] if args.rows else None
    rows = table_rows(args.table, rows=names)
    if args.no_sanity:
        rows = [r for r in rows if not r.sanity]
    table = rows[0].table if rows else str(args.table)
    if args.samples < 2:
        raise UsageError(f"--samples must be at least 2, got {args.samples}")
    if args.seed_sets < 1:
        raise UsageError(f"--seed-sets must be at least 1, got {args.seed_sets}")
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.family is not None and args.family not in FAMILIES:
        raise UsageError(f"--family {args.family}: unknown; families: {', '.join(FAMILIES)}")
    if not args.checkpoint and not args.arch:
        raise UsageError("give --checkpoint FILE (the table's public checkpoint; docs/reproduce.md says which)")
    if not args.dry_run:
        if not args.ref:
            raise UsageError("give --ref REF.npz (reference statistics; docs/reproduce.md says which) or use "
                             "--dry-run")
        if not args.out:
            raise UsageError("give --out DIR (where the table, CSV and plot go)")
        from skiptune.io.outputs import check_writable_folder

        check_writable_folder(args.out, "--out")
        check_db(args.db or str(Path(args.out) / "results.sqlite"))
        check_weights(args.weights)
    args.model = args.checkpoint
    loaded = open_from_args(args)
    net = loaded.net
    family = _family(args, net, rows)
    if args.dry_run:
        return _dry_run(args, table, rows, net, family)
    return _run(args, table, rows, loaded, family)


def _family(args, net, rows) -> str:
    from skiptune.runs.reproduce import FAMILIES, detect_family

    found = detect_family(net)
    if args.family is None:
        if found is None:
            fams = "; ".join(f"{f.name} ({f.network}; channels, resolution, classes = {f.shape})"
                             for f in FAMILIES.values() if f.needs is None)
            raise UsageError(f"--checkpoint {args.checkpoint or args.arch}: not recognised as a checkpoint of the "
                             f"paper's tables; known: {fams}; pass --family NAME to run it as one")
        return found
    if found != args.family:
        fam = FAMILIES[args.family]
        warnings.warn(f"the checkpoint does not have the class and shape of {args.family} ({fam.network}, "
                      f"{fam.shape}): its FIDs are not comparable with the paper's", stacklevel=2)
    return args.family


def _decoder(args, net, loaded=None):
    if args.vae is None and loaded is not None and loaded.loader == "ldm":
        args.vae = args.checkpoint  # a latent-diffusion checkpoint decodes with its own first stage
    if args.vae is None:
        if getattr(net, "latent_scale_factor", None) is not None:
            raise UsageError("this is a latent model: its samples are latents and FID needs images; pass --vae DIR "
                             "(the autoencoder it was trained with; docs/reproduce.md says which)")
        return None
    from skiptune.core.denoiser import DenoiserInfo
    from skiptune.io.vae import check_decoder_fits, load_decoder

    decoder = load_decoder(args.vae, scale=args.vae_scale, device=args.device)
    check_decoder_fits(decoder, DenoiserInfo.of(net).shape, model_scale=getattr(net, "latent_scale_factor", None))
    return decoder


def _dry_run(args, table, rows, net, family) -> int:
    from skiptune.report.reproduce import plan_text
    from skiptune.runs.reproduce import plan, time_forward

    p = plan(rows, family, n=args.samples, seed_sets=args.seed_sets)
    seconds = time_forward(net, batch=args.batch, device=args.device) if any(x.runnable for x in p) else None
    print(plan_text(table, p, family, seconds_per_forward=seconds, batch=args.batch, device=args.device))
    return 0


def _run(args, table, rows, loaded, family) -> int:
    from contextlib import nullcontext

    from skiptune.core.provenance import write_run_json
    from skiptune.distributed import init_distributed
    from skiptune.experiment import ModelRef, open_store
    from skiptune.experiment.generate import check_guidance
    from skiptune.io.outputs import atomic_file
    from skiptune.report.reproduce import markdown, plot, write_csv
    from skiptune.runs.reproduce import FAMILIES, run_table
    from skiptune.skip import check_cache

    net = loaded.net
    fam = FAMILIES[family]
    check_guidance(net, fam.guidance)
    cache = cache_from_args(args)
    check_cache(net, cache)
    decoder = _decoder(args, net, loaded)
    if args.features is None and not Path(args.ref).suffix == ".npz":
        raise UsageError("--ref is a data set: give --features too (the paper's FID uses inception-v3)")
    scoring_features(args.features, args.ref)
    d = init_distributed(args.device)
    scorer = load_scorer(args, progress=not args.no_progress and d.is_main, resolution=image_resolution(net, decoder))
    db = args.db or str(Path(args.out) / "results.sqlite")
    if d.is_main:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    with open_store(db) if d.is_main else nullcontext() as store:
        results = run_table(rows, net, family, scorer=scorer, store=store, n=args.samples, seed_sets=args.seed_sets,
                            model=ModelRef.of(loaded), batch=args.batch, device=str(d.device), decoder=decoder,
                            dist=d, progress=not args.no_progress and d.is_main, cache=cache)
    if not d.is_main:
        return 0
    out = Path(args.out)
    header = [f"Checkpoint `{loaded.source}` (sha256 {loaded.sha256}), family {family}: {fam.title}.",
              f"Features `{scorer.extractor.name}` (weights sha256 {scorer.extractor.weights_sha256}), reference "
              f"`{args.ref}`; {args.seed_sets} seed set(s) of {args.samples} samples "
              f"(seeds 0..{args.samples * args.seed_sets - 1}); intervals: 95% Student-t over seed sets "
              "(none with one set).",
              *([f"Decoder `{decoder.source}` (sha256 {decoder.sha256}, scale {decoder.scale:g})."] if decoder else []),
              *([f"Guidance W = {fam.guidance:g} ({fam.note})."] if fam.guidance else []),
              *([f"Feature cache `{cache}` on every row: these are not the paper's settings."] if cache else []),
              *([f"Stand-in: the checkpoint is run as {family} (--family) without having its shape; these FIDs "
                 "are not comparable with the paper's."] if args.family and args.family != _detect(net) else [])]
    with atomic_file(out / f"table{table}.md", "--out") as tmp:
        tmp.write_text(markdown(table, results, family, header=header))
    with atomic_file(out / f"table{table}.csv", "--out") as tmp:
        write_csv(results, tmp)
    png = plot(table, results, out / f"table{table}.png")
    write_run_json(out / "config.json", {"command": "reproduce", "table": table, "family": family,
                                         "checkpoint": {"source": loaded.source, "sha256": loaded.sha256},
                                         "ref": args.ref, "features": scorer.extractor.name, "n": args.samples,
                                         "seed_sets": args.seed_sets, "rows": [r.name for r in rows],
                                         "decoder": decoder.describe() if decoder else None, "db": db,
                                         "cache": cache})
    print(markdown(table, results, family, header=header))
    print(f"-> {out / f'table{table}.md'}, {out / f'table{table}.csv'}" + (f", {png}" if png else ""))
    return 0


def _detect(net):
    from skiptune.runs.reproduce import detect_family

    return detect_family(net)
