"""``skiptune sample``: generate images with a sampler and a Skip-Tuning rule."""

from __future__ import annotations

import json
from pathlib import Path

from skiptune.cli import UsageError, add_model_options, open_from_args

#: what ``sample --out DIR`` writes, and all that ``--overwrite`` may replace
OUTPUTS = ("images", "images.npz", "latents.npz", "grid.png", "config.json")


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
    from skiptune.experiment.generate import DISCRETE_GRIDS, SCHEDULE_GRIDS
    from skiptune.sampling import GRIDS, SAMPLERS

    p.add_argument("--sampler", default="heun", choices=sorted(SAMPLERS))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nfe", type=int, help="number of network evaluations (default 9)")
    g.add_argument("--steps", type=int, help="number of sampler steps instead of --nfe")
    p.add_argument("--grid", default="edm", choices=sorted([*GRIDS, *DISCRETE_GRIDS, *SCHEDULE_GRIDS]),
                   help="sigma grid (default: EDM rho=7; discrete: DDIM's uniform timesteps of a DDPM model; "
                        "discrete-time-uniform: DPM-Solver's time-uniform steps of a discrete-time model)")
    p.add_argument("--sigma-min", type=float, default=None)
    p.add_argument("--sigma-max", type=float, default=None)
    add_end_option(p)
    add_guidance_option(p)
    p.add_argument("--options", default=None, metavar="K=V,...",
                   help="sampler options, e.g. order=3,variant=bh2 (denoise_to_zero=true adds a final x = D(x, "
                        "sigma_min), one more NFE)")
    p.add_argument("--rule", default="none", help="Skip-Tuning rule, e.g. layer:0.7 (default none)")
    p.add_argument("--mode", default="concat", choices=["concat", "residual", "norm"])


def add_end_option(p) -> None:
    """``--end``: where the sigma grid ends (default: the sampler's reference implementation)."""
    p.add_argument("--end", default=None, choices=["sigma_min", "zero"],
                   help="where the sigma grid ends: sigma_min (n solver steps ending at sigma_min, NFE = n: the "
                        "official UniPC/DPM-Solver code and diff-sampler; default for ddim, dpmpp_*, unipc, deis, "
                        "ipndm) or zero (the last step goes to sigma = 0: EDM's Heun, NFE = 2N - 1; default for "
                        "euler, heun, edm_sde and the discrete grids)")


def add_guidance_option(p) -> None:
    """``--guidance W``: classifier-free guidance for networks with a trained null label."""
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="classifier-free guidance D = D_uncond + W (D_cond - D_uncond); W = 1 is none (the default), "
                        "U-ViT's scale s is W = 1 + s (its ImageNet-256 models: s = 0.4, W = 1.4). Needs a network "
                        "with a null label (U-ViT); each evaluation then runs the network twice")


def add_cache_option(p) -> None:
    """``--cache POLICY``: a feature-cache policy (Faster Diffusion encoder propagation, DeepCache)."""
    p.add_argument("--cache", default=None, metavar="POLICY",
                   help="reuse features across evaluations: encoder:N (Faster Diffusion: every N-th evaluation runs "
                        "the whole network, the others only the decoder), deepcache:N[:branch=B] (DeepCache: the "
                        "others rerun only the shallow branch down to skip B, 0 = outermost), or keys=0-3,5,.. "
                        "instead of N for hand-set key evaluations; default none")


def cache_from_args(args) -> str | None:
    """The canonical policy of ``--cache`` (a UsageError naming the syntax when it does not parse)."""
    from skiptune.core.errors import InputError
    from skiptune.skip import canonical_cache

    try:
        return canonical_cache(args.cache)
    except InputError as exc:
        raise UsageError(f"--cache {args.cache}: {exc}") from None


def spec_from_args(args):
    from skiptune.experiment.generate import SamplingSpec

    nfe = args.nfe if args.nfe is not None or args.steps is not None else 9
    return SamplingSpec(args.sampler, nfe=nfe if args.steps is None else None, steps=args.steps, grid=args.grid,
                        sigma_min=args.sigma_min, sigma_max=args.sigma_max, options=parse_options(args.options),
                        end=args.end, guidance=args.guidance)


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate images (PNG grid, PNGs, .npz, config JSON)",
                       description="Sample one image per seed and write OUT/grid.png, OUT/images/<seed>.png, "
                                   "OUT/images.npz and OUT/config.json. The folder appears complete when "
                                   "sampling ends, or not at all: everything is written to a temporary folder "
                                   "beside it first.")
    add_model_options(p)
    add_sampling_options(p)
    p.add_argument("--seeds", default="0-63", help="seed list, e.g. 0-63 or 0-9,100 (one image per seed)")
    p.add_argument("--class", dest="class_label", type=int, default=None, help="fixed class label (conditional nets)")
    p.add_argument("--freeu", default=None, metavar="B1,B2,S1,S2",
                   help="also apply FreeU with these factors (b1=..,b2=..,s1=..,s2=.. or 4 values); 0 is valid")
    add_cache_option(p)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="network precision (mixed precision via autocast; the sampler state stays float64)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: new or empty (see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace the output of an earlier run in --out ({', '.join(OUTPUTS)}); a folder holding "
                        "anything else is refused")
    p.add_argument("--vae", default=None, metavar="DIR",
                   help="latent models: decode the latents with this autoencoder folder (diffusers save_pretrained, "
                        "e.g. Stable Diffusion's VAE for U-ViT) and write images; without it latents.npz is written")
    p.add_argument("--vae-scale", type=float, default=None,
                   help="latent scale of --vae (default: its config's scaling_factor)")
    p.add_argument("--no-pngs", action="store_true", help="skip the per-image PNGs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from skiptune.distributed import gather_generated, init_distributed, shard_batches
    from skiptune.experiment.generate import generate
    from skiptune.io.outputs import atomic_folder, check_output_folder
    from skiptune.sampling import parse_seeds
    from skiptune.skip import FreeUConfig, as_rule

    rule = as_rule(args.rule)
    args.freeu = FreeUConfig.parse(args.freeu) if args.freeu else None
    args.cache = cache_from_args(args)
    spec = spec_from_args(args)
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        raise UsageError(f"--seeds {args.seeds}: {exc}") from None
    if not seeds:
        raise UsageError("--seeds is empty")
    # every process checks the destination before any work (only rank 0 writes, at the end)
    check_output_folder(args.out, "--out", owned=OUTPUTS, overwrite=args.overwrite)
    d = init_distributed(args.device)  # one process unless started by torchrun
    loaded = open_from_args(args)
    net = loaded.net
    decoder = _decoder(args, net) if d.is_main else None  # a wrong --vae fails before any sampling
    mine = shard_batches(seeds, args.batch, d.rank, d.world_size)
    res = generate(net, mine, spec, rule=rule, mode=args.mode, batch_size=args.batch, class_label=args.class_label,
                   device=d.device, progress=not args.no_progress and d.is_main, freeu=args.freeu,
                   precision=args.precision, cache=args.cache, time_cache=args.cache is not None and
                   d.device.type == "cpu") if mine else None
    res = gather_generated(res, d)
    if res is None:  # not the main process: rank 0 writes the results
        return 0
    extra = {"seeds": res.seeds}
    if res.labels is not None:
        extra["labels"] = res.labels.numpy()
    scale = getattr(net, "latent_scale_factor", None)
    config = _run_config(args, loaded, spec, rule, res)
    if decoder is not None:
        res.images = decoder.decode(res.images, batch_size=args.batch, progress=not args.no_progress)
        config["decoder"] = decoder.describe()
        scale = None  # images from here on
    out = Path(args.out)
    # all outputs go to a temporary folder beside --out that takes its place when complete (config.json last)
    with atomic_folder(out, "--out", owned=OUTPUTS, overwrite=args.overwrite, last=["config.json"]) as tmp:
        if scale is not None:
            shape = _write_latents(tmp, res, extra, scale, config)
        else:
            _write_images(tmp, res, extra, config, pngs=not args.no_pngs)
    if scale is not None:
        print(f"{len(res.seeds)} latents ({shape}), {spec.sampler} NFE={res.nfe}, rule {rule}, {res.seconds:.1f}s "
              f"-> {out}")
        print(f"latent model: no images written; decode latents / {scale:g} with the autoencoder the model was "
              "trained with (Stable Diffusion's KL-f8 VAE for the U-ViT ImageNet presets): --vae DIR")
        if res.cache:
            print(cache_summary(res.cache))
        print(json.dumps({"npz": str(out / "latents.npz")}))
        return 0
    print(f"{len(res.seeds)} images, {spec.sampler} NFE={res.nfe}, rule {rule}, {res.seconds:.1f}s -> {out}")
    if res.cache:
        print(cache_summary(res.cache))
    print(json.dumps({"grid": str(out / "grid.png"), "npz": str(out / "images.npz")}))
    return 0


def cache_summary(record: dict) -> str:
    """One line on what a cached run computed: full/partial evaluations and the measured full-network cost."""
    line = (f"cache {record['policy']}: {record['full_per_sample']} full + {record['partial_per_sample']} partial "
            "evaluations per sample")
    if "partial_cost" in record:
        per = record["full_per_sample"] + record["partial_per_sample"] * record["partial_cost"]
        line += (f"; a partial pass costs {record['partial_cost']:.2f} of a full one (timed), so "
                 f"{per:.1f} full-network equivalents per sample")
    return line


def _decoder(args, net):
    """The autoencoder of ``--vae``, checked against the network's latents; None without ``--vae``."""
    if args.vae is None:
        if args.vae_scale is not None:
            raise UsageError("--vae-scale needs --vae DIR")
        return None
    if getattr(net, "latent_scale_factor", None) is None:
        raise UsageError("--vae: this network generates images, not latents; drop --vae")
    from skiptune.core.denoiser import DenoiserInfo
    from skiptune.io.vae import check_decoder_fits, load_decoder

    decoder = load_decoder(args.vae, scale=args.vae_scale, device=args.device)
    check_decoder_fits(decoder, DenoiserInfo.of(net).shape,
                       model_scale=None if args.vae_scale is not None else net.latent_scale_factor)
    return decoder


def _write_images(folder: Path, res, extra: dict, config: dict, *, pngs: bool) -> None:
    """images.npz, grid.png, images/<seed>.png and, last, config.json into ``folder``."""
    from skiptune.core.provenance import write_run_json
    from skiptune.experiment.generate import to_uint8
    from skiptune.io.images import save_grid, save_npz, save_png

    imgs = to_uint8(res.images)
    save_npz(imgs, folder / "images.npz", **extra)
    save_grid(imgs[:256], folder / "grid.png", scale=max(1, 128 // imgs.shape[-1]))
    if pngs:
        (folder / "images").mkdir()
        for seed, img in zip(res.seeds, imgs, strict=True):
            save_png(img, folder / "images" / f"{seed:06d}.png")
    write_run_json(folder / "config.json", config)


def _run_config(args, loaded, spec, rule, res) -> dict:
    model = {"source": loaded.source, "loader": loaded.loader, "sha256": loaded.sha256, "extra": loaded.extra}
    return {"command": "sample", "model": model, "network": loaded.network, "sampling": spec.config(loaded.net),
            "rule": str(rule), "mode": args.mode,
            "freeu": str(args.freeu) if args.freeu else None, "cache": res.cache, "seeds": args.seeds,
            "class_label": args.class_label, "batch": args.batch, "device": args.device, "precision": args.precision,
            "processes": res.processes, "seconds": round(res.seconds, 3)}


def _write_latents(folder: Path, res, extra: dict, scale: float, config: dict) -> str:
    """A latent model's samples: float32 latents in latents.npz (no autoencoder ships with skiptune), then
    config.json, into ``folder``; returns the latent shape as text."""
    import numpy as np

    from skiptune.core.provenance import write_run_json

    latents = res.images.float().cpu().numpy()
    with open(folder / "latents.npz", "wb") as f:
        np.savez(f, latents=latents, latent_scale_factor=np.float64(scale), **extra)
    write_run_json(folder / "config.json", {**config, "output": "latents"})
    return "x".join(str(n) for n in latents.shape[1:])
