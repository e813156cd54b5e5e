"""Where does Skip-Tuning help? Paired FID differences (rule - untouched) across models of one data set.

For each model (e.g. snapshots of one training run, or networks of different capacity) and each
sampler / NFE, every rule is sampled on the same seed sets as the untouched network, scored with
a domain classifier's features (default: the shipped digits classifier against the training
digits; `--data shapes --features shapes-classifier` for the shapes), and reported as the mean
paired difference with its 95% Student-t interval over the seed sets. Results live in a SQLite
store, so an interrupted or repeated run recomputes nothing.

    python benchmarks/skip_effect.py --model 1k=runs/demo-digits/ema-0001000.safetensors \\
        --model 8k=src/skiptune/assets/demo-digits.safetensors --nfe 9 --db runs/skip-effect.sqlite

Also prints each model's FID at Heun NFE 39 (untouched, first seed set) as a quality measure.
"""

from __future__ import annotations

import argparse
import time

from skiptune import load_model
from skiptune.core.stats import t_interval
from skiptune.experiment import ModelRef, Scorer, open_store
from skiptune.runs.sweep import SweepSpec, expand_rules, run_sweep, seed_sets
from skiptune.sampling import parse_seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=PATH", help="repeatable")
    ap.add_argument("--rules", default="none;const:0.7;const:0.85;const:1.15")
    ap.add_argument("--samplers", default="heun,unipc")
    ap.add_argument("--nfe", default="9")
    ap.add_argument("--seeds", default="0-99")
    ap.add_argument("--sets", type=int, default=3)
    ap.add_argument("--quality-nfe", type=int, default=39, help="Heun NFE of the quality column (0: skip)")
    ap.add_argument("--db", default="runs/skip-effect.sqlite")
    ap.add_argument("--data", default="digits", help="reference data: its training split (default digits)")
    ap.add_argument("--features", default="digits-classifier", help="registered feature network")
    ap.add_argument("--weights", help="weights file of the feature network (default: its shipped one)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    scorer = Scorer.load(args.features, args.data, weights=args.weights)
    rules = expand_rules(args.rules)
    if rules[0] != "none":
        raise SystemExit("--rules must start with 'none' (the baseline of the paired differences)")
    sets = seed_sets(args.seeds, args.sets)
    lines = []
    with open_store(args.db) as store:
        for item in args.model:
            label, _, path = item.partition("=")
            if not path:
                raise SystemExit(f"--model must be LABEL=PATH, got {item!r}")
            net = load_model(path)
            model = ModelRef.of_network(net, path)
            quality = "-"
            if args.quality_nfe:
                q = run_sweep(net, SweepSpec(rules=["none"], samplers=["heun"], nfes=[args.quality_nfe],
                                             seed_sets=sets[:1], batch=300),
                              store=store, scorer=scorer, model=model, progress=False)
                quality = f"{q[0].estimate.mean:.1f}"
            spec = SweepSpec(rules=rules, samplers=args.samplers.split(","), nfes=[int(x) for x in args.nfe.split(",")],
                             seed_sets=sets, batch=300)
            rows = run_sweep(net, spec, store=store, scorer=scorer, model=model, progress=False)
            first = len(lines)
            by = {(r.sampler, r.nfe, r.rule): r.estimate for r in rows}
            for s in spec.samplers:
                for n in spec.nfes:
                    base = by[(s, n, "none")]
                    cells = []
                    for rule in rules[1:]:
                        d = t_interval([a - b for a, b in zip(by[(s, n, rule)].values, base.values, strict=True)])
                        mark = "**" if d.ci_high < 0 else ("_" if d.ci_low > 0 else "")
                        cells.append(f"{mark}{d.mean:+.1f} +- {d.half_width:.1f}{mark}")
                    lines.append(f"| {label} | {s} {n} | {quality} | {base.mean:.1f} | " + " | ".join(cells) + " |")
            print("\n".join(lines[first:]), flush=True)
    print()
    quality_head = f"FID Heun {args.quality_nfe} (rho = 1, first set)" if args.quality_nfe else "-"
    print(f"| model | sampler NFE | {quality_head} | FID rho = 1 | "
          + " | ".join(f"{r} - none" for r in rules[1:]) + " |")
    print("|" + " --- |" * (len(rules) + 3))
    print("\n".join(lines))
    print()
    print(f"paired differences over {args.sets} seed sets of {len(parse_seeds(sets[0]))} samples ({', '.join(sets)}); "
          "**bold**: the interval lies below 0 (helps), _italic_: above 0 (hurts)")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
