"""S²-DM vs standard DDPM training on the shipped digits data: train the pair, then compare FIDs.

Both models are the same DDPM++ SongUNet wrapped as a discrete eps-prediction network (T = 1000, linear
betas), trained from the same seed on the same data order, timesteps and noise (the S²-DM run draws
the same e1 and additionally uses its e2). Only the objective differs: L0 (``--objective ddpm``) vs
``tau L0 + (1 - tau) L_skip`` (``--objective s2dm``). Then every sampler x step count is scored by FID
in the shipped digits classifier's feature space against the digits training split, over several
seed sets (the same seeds for both models), with the relative improvement (base - s2dm)/base and its
paired 95% interval (:func:`skiptune.runs.compare.compare_training`). A real-vs-real floor (held-out
test digits vs the training split, at the same sample count) is printed for scale.

Everything is resumable: training continues from ``OUT/{ddpm,s2dm}/training-state.pt`` and every FID
lives in ``OUT/results.sqlite``.

    python benchmarks/s2dm_digits.py                 # benchmark size (hours on 2 CPU cores)
    python benchmarks/s2dm_digits.py --quick         # a small net and few steps (tens of minutes)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

FULL = dict(steps=4000, batch=64, lr=2e-3, model_channels=32, num_blocks=2, attn="8", seeds="0-499", sets=3,
            samplers="ddim,ipndm,deis", sample_steps="10,20,50,100")
QUICK = dict(steps=1000, batch=64, lr=2e-3, model_channels=16, num_blocks=1, attn="none", seeds="0-199", sets=3,
             samplers="ddim,ipndm,deis", sample_steps="10,20,50")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/s2dm-digits")
    ap.add_argument("--quick", action="store_true", help="small preset: " + json.dumps(QUICK))
    ap.add_argument("--steps", type=int, help="training steps of each model")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--model-channels", type=int)
    ap.add_argument("--num-blocks", type=int)
    ap.add_argument("--attn", help="attention resolutions, e.g. 8, or none")
    ap.add_argument("--skip-span", type=int, default=10)
    ap.add_argument("--tau", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samplers")
    ap.add_argument("--sample-steps", help="comma-separated sampler step counts")
    ap.add_argument("--seeds", help="first seed set")
    ap.add_argument("--sets", type=int, help="number of seed sets")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)
    preset = QUICK if args.quick else FULL
    opt = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in preset.items()}
    torch.set_num_threads(args.threads)

    from skiptune.demo.assets import classifier_extractor
    from skiptune.experiment import Scorer, open_store
    from skiptune.experiment.generate import to_uint8
    from skiptune.io import load_model
    from skiptune.metrics import extract_features, fid_from_stats
    from skiptune.runs.compare import CompareSpec, compare_training, format_compare_table
    from skiptune.sampling import parse_seeds
    from skiptune.train import TrainConfig, load_dataset, train

    out = Path(args.out)
    attn = () if opt["attn"].lower() == "none" else tuple(int(v) for v in opt["attn"].split(","))
    net = dict(model_channels=opt["model_channels"], channel_mult=(1, 2, 2), num_blocks=opt["num_blocks"],
               attn_resolutions=attn)
    common = dict(data="digits", steps=opt["steps"], batch=opt["batch"], lr=opt["lr"], grad_clip=1.0,
                  ema_halflife_images=20_000, save_every=250, seed=args.seed, progress=False, **net)
    data = load_dataset("digits")
    paths, seconds = {}, {}
    for objective in ("ddpm", "s2dm"):
        extra = dict(skip_span=args.skip_span, tau=args.tau) if objective == "s2dm" else {}
        t0 = time.perf_counter()
        result = train(TrainConfig(out=str(out / objective), objective=objective, **common, **extra), resume=True,
                       data=data)
        paths[objective], seconds[objective] = result.network, time.perf_counter() - t0
        tail = result.losses[-100:]
        print(f"{objective}: {result.steps} steps ({seconds[objective]:.0f} s this call), last-100-step loss "
              f"{np.mean(tail) if tail else float('nan'):.4f} -> {result.network}", flush=True)

    ext = classifier_extractor()
    feature = ext.feature_for("fid")
    ref = extract_features(to_uint8(data.images), ext, features=[feature], keep=False)
    n = len(parse_seeds(opt["seeds"]))
    test = to_uint8(load_dataset("digits", split="test").images)
    chunks = [test[i:i + n] for i in range(0, len(test) - n + 1, n)][:opt["sets"]]
    floor = [float(fid_from_stats(extract_features(c, ext, features=[feature], keep=False).get(feature),
                                  ref.get(feature))) for c in chunks]
    t0 = time.perf_counter()
    with open_store(out / "results.sqlite") as store:
        spec = CompareSpec(samplers=opt["samplers"].split(","), steps=[int(s) for s in opt["sample_steps"].split(",")],
                           seeds=opt["seeds"], sets=opt["sets"])
        rows = compare_training(load_model(paths["ddpm"]), load_model(paths["s2dm"]), spec, Scorer(ext, ref), store,
                                progress=True)
    table = format_compare_table(rows)
    print(f"\nsettings: {json.dumps({**opt, 'skip_span': args.skip_span, 'tau': args.tau, 'seed': args.seed})}")
    print(f"FID: digits-classifier features vs {ref.get(feature).n} training digits; {opt['sets']} seed sets of {n} "
          f"samples; grid: DDIM's uniform timesteps; evaluation {time.perf_counter() - t0:.0f} s")
    if floor:
        print(f"real-vs-real floor ({len(floor)} sets of {n} held-out digits): {np.mean(floor):.2f}")
    else:
        print(f"no real-vs-real floor: fewer than {n} held-out digits")
    print(table)
    (out / "compare.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
