"""``skiptune compare-training``: FID of a standard-trained and an S²-DM-trained model, side by side."""

from __future__ import annotations

import json
from pathlib import Path

from skiptune.cli import WEIGHTS_FLAG, UsageError, check_db, check_weights, parse_list, scoring_features, with_flags
from skiptune.core.errors import MissingFileError


def register(sub) -> None:
    p = sub.add_parser(
        "compare-training", help="FID table: standard training vs S²-DM training (stored, resumable)",
        description="Sample both models with every sampler and step count on the same seed sets, score FID, and "
                    "print a markdown table with the relative improvement (base - s2dm)/base and 95% Student-t "
                    "intervals over the seed sets. Every FID is a run in the results store, so an interrupted "
                    "comparison resumes and a rerun recomputes nothing. Digits models default to the shipped "
                    "classifier features and the digits training split as reference; other models need --ref.")
    p.add_argument("base", metavar="BASE.safetensors", help="the standard-trained model (e.g. --objective ddpm)")
    p.add_argument("s2dm", metavar="S2DM.safetensors", help="the S²-DM-trained model (--objective s2dm)")
    p.add_argument("--samplers", default="ddim,ipndm,deis", help="comma-separated samplers (default ddim,ipndm,deis)")
    p.add_argument("--steps", default="10,20,50,100", help="comma-separated step counts (default 10,20,50,100)")
    p.add_argument("--grid", default="discrete",
                   help="time grid: discrete (DDIM's uniform timesteps, default), discrete-trailing, or a sigma grid "
                        "such as edm")
    p.add_argument("--rules", default="none", help="';'-separated Skip-Tuning rules applied to both models "
                                                    "(default none), e.g. 'none;layer:0.8'")
    p.add_argument("--mode", default="concat", choices=["concat", "residual", "norm"])
    p.add_argument("--seeds", default="0-999", help="first seed set; further sets are shifted copies (default 0-999)")
    p.add_argument("--seed-sets", type=int, default=3, help="number of seed sets (default 3)")
    p.add_argument("--features", default=None,
                   help="feature network for FID (default: the one recorded in --ref statistics, else "
                        "digits-classifier for digits models and inception-v3 for others)")
    p.add_argument("--weights", default=None, help="weights file of the feature network")
    p.add_argument("--ref", default=None, metavar="REF.npz|DATA",
                   help="reference statistics (.npz from `skiptune ref`) or a data set (its training split); "
                        "default for digits models: the digits training split")
    p.add_argument("--db", default="runs/results.sqlite", help="results store (SQLite; created if missing)")
    p.add_argument("--out", default=None, help="also write the table (compare.md) and the rows (compare.json) here")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _describe(model) -> str:
    extra = model.extra
    cfg = extra.get("train_config") or {}
    objective = extra.get("objective") or cfg.get("objective") or "unknown objective"
    text = f"{type(model.net).__name__}, {objective}"
    if objective == "s2dm":
        text += f" (skip span {cfg.get('skip_span')}, tau {cfg.get('tau')})"
    if "step" in extra:
        text += f", {extra['step']} steps on {extra.get('dataset', '?')}"
    return text


def run(args) -> int:
    import torch

    from skiptune.experiment import Scorer, open_store
    from skiptune.io import open_model
    from skiptune.runs.compare import CompareSpec, compare_training, format_compare_table
    from skiptune.runs.sweep import expand_rules
    from skiptune.sampling import parse_seeds

    spec = CompareSpec(samplers=parse_list(args.samplers, flag="--samplers", what="sampler names"),
                       steps=parse_list(args.steps, int, flag="--steps", what="integers"), seeds=args.seeds,
                       sets=args.seed_sets, rules=expand_rules(args.rules), grid=args.grid, mode=args.mode,
                       batch=args.batch)
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    check_db(args.db)  # a store that cannot be used fails before models and references are loaded
    check_weights(args.weights)
    recorded = scoring_features(args.features, args.ref, default="")  # a --ref file that is unusable fails here
    models = open_model(args.base), open_model(args.s2dm)
    base, s2dm = (m.net for m in models)
    digits = all(m.extra.get("dataset") == "digits" for m in models)
    if args.ref is None and not digits:
        raise UsageError("--ref is required unless both models were trained on digits: give reference statistics "
                         "(an .npz from `skiptune ref`) or the training data set")
    features = recorded or ("digits-classifier" if digits else "inception-v3")
    spec.check(base, s2dm)  # before extracting any reference features
    try:
        scorer = Scorer.load(features, args.ref or "digits", weights=args.weights, device=args.device,
                             progress=not args.no_progress)
    except MissingFileError as exc:
        raise with_flags(exc, WEIGHTS_FLAG) from None
    print(f"base  {args.base}: {_describe(models[0])}")
    print(f"s2dm  {args.s2dm}: {_describe(models[1])}")
    with open_store(args.db) as store:
        rows = compare_training(base, s2dm, spec, scorer, store, device=args.device, progress=not args.no_progress,
                                sources=(args.base, args.s2dm))
    table = format_compare_table(rows)
    print(f"FID ({scorer.extractor.name} features, vs {scorer.spec().ref_n} reference images): mean ± 95% "
          f"half-width over {args.seed_sets} seed sets of {len(parse_seeds(args.seeds))} samples; relative "
          "improvement = (base - s2dm) / base, paired per seed set")
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(table + "\n")
        (out / "compare.json").write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
        print(f"table and rows in {out}")
    return 0
