"""``skiptune sample``: generate images with a sampler and a Skip-Tuning rule."""

from __future__ import annotations

import json
from pathlib import Path

from skiptune.cli import UsageError, add_model_options, load_from_args


def parse_options(text: str | None) -> dict:
    """``order=3,variant=bh2,S_churn=40`` -> dict with numbers converted."""
    out: dict = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise UsageError(f"sampler option {part!r} is not KEY=VALUE")
        key, value = (s.strip() for s in part.split("=", 1))
        for conv in (int, float):
            try:
                out[key] = conv(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def add_sampling_options(p) -> None:
    """Sampler, NFE/steps, grid and rule options shared by sampling commands."""
    from skiptune.sampling import GRIDS, SAMPLERS

    p.add_argument("--sampler", default="heun", choices=sorted(SAMPLERS))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nfe", type=int, help="number of network evaluations (default 9)")
    g.add_argument("--steps", type=int, help="number of sampler steps instead of --nfe")
    p.add_argument("--grid", default="edm", choices=sorted(GRIDS), help="sigma grid (default: EDM rho=7)")
    p.add_argument("--sigma-min", type=float, default=None)
    p.add_argument("--sigma-max", type=float, default=None)
    p.add_argument("--options", default=None, metavar="K=V,...", help="sampler options, e.g. order=3,variant=bh2")
    p.add_argument("--rule", default="none", help="Skip-Tuning rule, e.g. layer:0.7 (default none)")
    p.add_argument("--mode", default="concat", choices=["concat", "residual", "norm"])


def spec_from_args(args):
    from skiptune.generate import SamplingSpec

    nfe = args.nfe if args.nfe is not None or args.steps is not None else 9
    return SamplingSpec(args.sampler, nfe=nfe if args.steps is None else None, steps=args.steps, grid=args.grid,
                        sigma_min=args.sigma_min, sigma_max=args.sigma_max, options=parse_options(args.options))


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate images (PNG grid, PNGs, .npz, config JSON)",
                       description="Sample one image per seed and write OUT/grid.png, OUT/images/<seed>.png, "
                                   "OUT/images.npz and OUT/config.json.")
    add_model_options(p)
    add_sampling_options(p)
    p.add_argument("--seeds", default="0-63", help="seed list, e.g. 0-63 or 0-9,100 (one image per seed)")
    p.add_argument("--class", dest="class_label", type=int, default=None, help="fixed class label (conditional nets)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--no-pngs", action="store_true", help="skip the per-image PNGs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from skiptune.generate import generate, to_uint8
    from skiptune.io.images import save_grid, save_npz, save_png
    from skiptune.provenance import write_run_json
    from skiptune.skip import as_rule

    rule = as_rule(args.rule)
    spec = spec_from_args(args)
    net = load_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = generate(net, args.seeds, spec, rule=rule, mode=args.mode, batch_size=args.batch,
                   class_label=args.class_label, device=args.device, progress=not args.no_progress)
    imgs = to_uint8(res.images)
    extra = {"seeds": res.seeds}
    if res.labels is not None:
        extra["labels"] = res.labels.numpy()
    save_npz(imgs, out / "images.npz", **extra)
    save_grid(imgs[:256], out / "grid.png", scale=max(1, 128 // imgs.shape[-1]))
    if not args.no_pngs:
        (out / "images").mkdir(exist_ok=True)
        for seed, img in zip(res.seeds, imgs, strict=True):
            save_png(img, out / "images" / f"{seed:06d}.png")
    config = {"command": "sample", "model": args.model or args.arch, "network": getattr(net, "skiptune_config", {}),
              "sampling": spec.config(net), "rule": str(rule), "mode": args.mode, "seeds": args.seeds,
              "class_label": args.class_label, "batch": args.batch, "device": args.device,
              "seconds": round(res.seconds, 3)}
    write_run_json(out / "config.json", config)
    print(f"{len(res.seeds)} images, {spec.sampler} NFE={res.nfe}, rule {rule}, {res.seconds:.1f}s -> {out}")
    print(json.dumps({"grid": str(out / "grid.png"), "npz": str(out / "images.npz")}))
    return 0
