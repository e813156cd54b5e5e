"""Quality of models at NFE 39 against the real-vs-real FID floor at the same sample count.

FID in a domain classifier's features (default: the shipped digits classifier) against the
training split (1497 digits; 10000 shapes), Heun NFE 39, untouched network; samples 0-1499 cut
into sets of n. The floor at n is the FID of n real images vs as many other real images as the
training split has, both drawn uniformly from train + test (``skiptune.metrics.fid_floor``); for
contrast, the FID of the held-out split in chunks of n against the training split: for the digits
at n = 300 that is the whole split, class-balanced (30 per class), which no unconditional sampler
can match (its class counts never fluctuate).

    python benchmarks/demo_quality.py                       # the shipped demo model
    python benchmarks/demo_quality.py runs/demo-digits/network.safetensors ...
    python benchmarks/demo_quality.py --data shapes --features shapes-classifier runs/shapes-16/network.safetensors
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from skiptune import load_model
from skiptune.experiment.generate import SamplingSpec, generate, to_uint8
from skiptune.metrics import extract_features, fid_floor, fid_from_features, get_extractor
from skiptune.train.data import digits_split_indices, load_dataset

SIZES = (100, 300)
N_SAMPLES = 1500


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help="checkpoints (default: the shipped demo model)")
    ap.add_argument("--draws", type=int, default=40, help="random real-vs-real splits per sample count")
    ap.add_argument("--data", choices=["digits", "shapes"], default="digits", help="the models' data set")
    ap.add_argument("--features", default="digits-classifier", help="registered feature network")
    ap.add_argument("--weights", help="weights file of the feature network (default: its shipped one)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    ext = get_extractor(args.features, weights=args.weights)
    f = ext.feature_for("fid")

    def feats(images):
        return extract_features(to_uint8(images), ext, features=[f], keep=True).get(f).features

    if args.data == "digits":  # the splits index into 'all': extract once
        pool = feats(load_dataset("digits", split="all").images)
        split = digits_split_indices()
    else:
        images = [load_dataset(args.data, split=s).images for s in ("train", "test")]
        pool = feats(torch.cat(images))
        split = {"train": np.arange(len(images[0])), "test": len(images[0]) + np.arange(len(images[1]))}
    train, test = pool[split["train"]], pool[split["test"]]
    floors = {n: fid_floor(pool, n, ref_n=len(train), draws=args.draws) for n in SIZES}
    print(f"real-vs-real floor (n real vs {len(train)} other real images, uniform draws from {len(pool)}; "
          f"{args.draws} draws): mean, std across draws")
    for n in SIZES:
        chunks = [fid_from_features(test[i:i + n], train) for i in range(0, min(len(test), 1500) - n + 1, n)]
        print(f"  n = {n}: {floors[n].mean():.2f} (std {floors[n].std(ddof=1):.2f}); held-out split in consecutive "
              f"chunks: {np.round(chunks, 2).tolist()}")
    print()
    print(f"| model | FID n={N_SAMPLES} | " + " | ".join(f"FID n={n} (mean, std over sets) | / floor" for n in SIZES)
          + " |")
    print("|" + " --- |" * (2 + 2 * len(SIZES)))
    for path in args.models or ["demo-digits"]:
        net = load_model(path)
        g = feats(generate(net, f"0-{N_SAMPLES - 1}", SamplingSpec("heun", nfe=39), batch_size=300).images)
        cells = [f"{fid_from_features(g, train):.2f}"]
        for n in SIZES:
            v = np.array([fid_from_features(g[i:i + n], train) for i in range(0, N_SAMPLES, n)])
            cells += [f"{v.mean():.2f} ({v.std(ddof=1):.2f}, {len(v)} sets)", f"{v.mean() / floors[n].mean():.2f}x"]
        print(f"| {path} | " + " | ".join(cells) + " |", flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
