"""Recipe of the shipped assets (``make demo-assets``): the two domain classifiers and the demo model.

    python -m skiptune.demo.make_assets --out src/skiptune/assets

All three are deterministic given their seeds on the same machine and software. Run time on 2 CPU
cores: about 10 minutes for the digits classifier, about 23 minutes for the shapes classifier and
35-40 minutes for the diffusion model.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from skiptune.demo.assets import CLASSIFIER, DEMO_MODEL, SHAPES_CLASSIFIER

# The demo diffusion model: a DDPM++-style SongUNet (EDM preconditioning and loss) on 16x16 digits.
DEMO_TRAIN = dict(data="digits", steps=4000, batch=64, lr=2e-3, ema_halflife_images=20000, save_every=500, seed=0,
                  model_channels=32, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(8,))
CLASSIFIER_TRAIN = dict(steps=1500, batch=128, lr=2e-3, seed=0)
# The shapes classifier: joint labels shape x palette x background (75 classes), 40000 training images.
SHAPES_CLASSIFIER_TRAIN = dict(data="shapes", train_size=40000, steps=5000, batch=128, lr=2e-3, seed=0)


def make_classifier(out: Path, progress: bool = True) -> dict:
    from skiptune.demo.classifier import train_classifier

    return train_classifier(out / CLASSIFIER, progress=progress, **CLASSIFIER_TRAIN)


def make_shapes_classifier(out: Path, progress: bool = True) -> dict:
    from skiptune.demo.classifier import train_classifier

    return train_classifier(out / SHAPES_CLASSIFIER, progress=progress, **SHAPES_CLASSIFIER_TRAIN)


def make_demo_model(out: Path, work: Path, progress: bool = True) -> Path:
    from skiptune.train.config import TrainConfig
    from skiptune.train.loop import train

    cfg = TrainConfig(out=str(work), progress=progress, **DEMO_TRAIN)
    result = train(cfg, resume=True)
    src = Path(result.network)
    shutil.copy(src, out / DEMO_MODEL)
    shutil.copy(src.with_suffix(".json"), (out / DEMO_MODEL).with_suffix(".json"))
    shutil.copy(work / "train-log.jsonl", out / "demo-digits.train-log.jsonl")
    return out / DEMO_MODEL


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="src/skiptune/assets")
    ap.add_argument("--work", default="runs/demo-digits", help="training folder (resumable)")
    ap.add_argument("--only", choices=["classifier", "shapes-classifier", "model"], default=None)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "classifier"):
        print("classifier:", make_classifier(out, progress=not args.no_progress))
    if args.only in (None, "shapes-classifier"):
        print("shapes classifier:", make_shapes_classifier(out, progress=not args.no_progress))
    if args.only in (None, "model"):
        print("model:", make_demo_model(out, Path(args.work), progress=not args.no_progress))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
