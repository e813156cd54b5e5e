"""``skiptune train``: EDM, DDPM or S²-DM training on a built-in data set, an image folder or an .npz file."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from skiptune.cli import UsageError, check_device

_DDPMPP_OPTIONS = ("model_channels", "channel_mult", "num_blocks", "attn", "dropout")


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a diffusion network with the EDM, DDPM or S²-DM loss (resumable)",
        description="Train a diffusion network: EDM-preconditioned (--objective edm) or a discrete-time "
                    "eps-prediction DDPM network (--objective ddpm, or s2dm for the skip-step loss of S²-DM). "
                    "The network is a preset (--arch), a JSON spec "
                    "(--net-json) or, by default, a DDPM++ SongUNet shaped by --model-channels, --channel-mult, "
                    "--num-blocks, --attn and --dropout, with the data's resolution and channels. Writes "
                    "config.json, train-log.jsonl, EMA snapshots, network.safetensors and training-state.pt "
                    "into --out; --resume continues an interrupted run bit-exactly (Ctrl-C stops cleanly).")
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, metavar="digits|shapes|DIR|NPZ", help="training images")
    d.add_argument("--resolution", type=int, help="resize (files), upsample (digits) or draw (shapes) at this size")
    d.add_argument("--data-size", type=int, help="shapes only: number of images (default 10000)")
    d.add_argument("--data-seed", type=int, default=None, help="shapes only: seed of the images (default 0)")
    d.add_argument("--xflip", action="store_true", help="random horizontal flips (not for digits)")
    d.add_argument("--cond", action="store_true", help="class-conditional training on the data's labels")
    d.add_argument("--label-dropout", type=float, default=0.0, help="probability of dropping a label (with --cond)")
    n = p.add_argument_group("network")
    g = n.add_mutually_exclusive_group()
    g.add_argument("--arch", metavar="PRESET", help="a named preset (channels and labels taken from the data)")
    g.add_argument("--net-json", metavar="FILE", help="JSON: {'class_name', 'kwargs'} or EDMPrecond kwargs")
    n.add_argument("--model-channels", type=int, help="DDPM++ base channels (default 32)")
    n.add_argument("--channel-mult", help="DDPM++ channel multipliers per level, e.g. 1,2,2 (default)")
    n.add_argument("--num-blocks", type=int, help="DDPM++ residual blocks per level (default 2)")
    n.add_argument("--attn", help="DDPM++ attention resolutions, e.g. 8 or 16,8, or 'none' (default 8)")
    n.add_argument("--dropout", type=float, help="DDPM++ dropout (default 0)")
    n.add_argument("--init-from", metavar="CKPT",
                   help="start the network and its EMA from this skiptune checkpoint or EDM pickle of the same "
                        "network (fresh optimizer and schedule): continue a finished run or fine-tune on other data")
    ob = p.add_argument_group("objective")
    ob.add_argument("--objective", default="edm", choices=["edm", "ddpm", "s2dm"],
                    help="edm (default): EDM loss and preconditioning; ddpm: discrete eps-prediction (T = 1000, "
                         "linear betas 1e-4..0.02, antithetic t); s2dm: ddpm plus the skip-step loss")
    ob.add_argument("--skip-span", type=int, default=None, metavar="K",
                    help="s2dm: alpha_skip = abar_t / abar_(t-K), K diffusion steps (default 10; the official "
                         "code's skip=9 is K = 9, which its paper calls S²-DM^10)")
    ob.add_argument("--tau", type=float, default=None, help="s2dm: weight of L0 in tau L0 + (1-tau) L_skip (0.99)")
    o = p.add_argument_group("optimisation")
    length = o.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="optimizer steps")
    length.add_argument("--images", type=int, help="training images (rounded up to whole batches)")
    o.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    o.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    o.add_argument("--lr-warmup", type=int, default=10_000, metavar="IMAGES", help="linear lr warm-up (10000)")
    o.add_argument("--lr-cooldown", type=int, default=None, metavar="STEP",
                   help="linear lr cool-down to 0 from this step to the last (default: none, constant lr)")
    o.add_argument("--ema-halflife", type=float, default=10_000, metavar="IMAGES", help="EMA half-life (10000)")
    o.add_argument("--ema-rampup", default="0.05", help="EMA half-life cap as a share of images seen, or 'none'")
    o.add_argument("--grad-clip", default=None,
                   help="clip the gradient norm to this value, or 'none' (default: none for edm, 1.0 for ddpm/s2dm)")
    o.add_argument("--p-mean", type=float, default=-1.2, help="edm: mean of ln(sigma) (default -1.2)")
    o.add_argument("--p-std", type=float, default=1.2, help="edm: std of ln(sigma) (default 1.2)")
    o.add_argument("--seed", type=int, default=0, help="seed of weights, data order and noise (default 0)")
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, metavar="DIR", help="output directory")
    r.add_argument("--resume", action="store_true", help="continue the run in --out (or start it)")
    r.add_argument("--save-every", type=int, default=1000, metavar="STEPS", help="snapshot interval (1000; 0: end)")
    r.add_argument("--log-every", type=int, default=10, metavar="STEPS", help="log interval (default 10)")
    r.add_argument("--device", default="cpu", help="torch device (default cpu)")
    r.add_argument("--threads", type=int, help="torch CPU threads (results may differ between thread counts)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _int_list(text: str, what: str) -> tuple[int, ...]:
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise UsageError(f"{what} must be positive, got {text!r}")
    return values


def _network(args) -> tuple[dict | None, dict]:
    """``(--net-json network or None, the DDPM++ options given)``; they exclude each other and --arch."""
    given = [o for o in _DDPMPP_OPTIONS if getattr(args, o) is not None]
    if given and (args.arch or args.net_json):
        flags = ", ".join("--" + o.replace("_", "-") for o in given)
        raise UsageError(f"{flags} shape the default DDPM++ network; they cannot be combined with --arch/--net-json")
    net = None
    if args.net_json:
        try:
            net = json.loads(Path(args.net_json).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--net-json {args.net_json}: {exc}") from None
        if not isinstance(net, dict):
            raise UsageError(f"--net-json {args.net_json}: expected a JSON object")
    lists = {"channel_mult": "--channel-mult", "attn": "--attn"}
    names = {"attn": "attn_resolutions"}
    ddpmpp = {names.get(o, o): _int_list(getattr(args, o), lists[o]) if o in lists else getattr(args, o)
              for o in given}
    return net, ddpmpp


def _data_options(args) -> None:
    """--resolution and --data-size are sizes (>= 1); --data-size and --data-seed only shape the generated
    shapes set: given for other data they would be recorded in config.json without having been used."""
    for flag, value in (("--resolution", args.resolution), ("--data-size", args.data_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.data != "shapes":
        given = [flag for flag, value in (("--data-size", args.data_size), ("--data-seed", args.data_seed))
                 if value is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} only {'applies' if len(given) == 1 else 'apply'} to --data "
                             f"shapes (the generated set); --data {args.data} has a fixed set of images: drop "
                             f"{' and '.join(given)}")


def _number_or_none(text: str, flag: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{flag} must be a number or 'none', got {text!r}") from None


def _objective(args) -> dict:
    s2dm_only = [flag for flag, v in (("--skip-span", args.skip_span), ("--tau", args.tau)) if v is not None]
    if s2dm_only and args.objective != "s2dm":
        raise UsageError(f"{', '.join(s2dm_only)} only apply to --objective s2dm (got --objective {args.objective})")
    objective = dict(objective=args.objective)
    if args.skip_span is not None:
        objective["skip_span"] = args.skip_span
    if args.tau is not None:
        objective["tau"] = args.tau
    # unset: TrainConfig's policy (1.0 for ddpm/s2dm, none for edm)
    objective["grad_clip"] = "auto" if args.grad_clip is None else _number_or_none(args.grad_clip, "--grad-clip")
    return objective


def config_from_args(args):
    """Build and validate a :class:`~skiptune.train.TrainConfig` from parsed options."""
    from skiptune.train import TrainConfig

    net, ddpmpp = _network(args)
    _data_options(args)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.save_every < 0:
        raise UsageError(f"--save-every must be >= 0, got {args.save_every}")
    config = TrainConfig(
        data=args.data, out=args.out, arch=args.arch, net=net, resolution=args.resolution, data_size=args.data_size,
        data_seed=0 if args.data_seed is None else args.data_seed, xflip=args.xflip, cond=args.cond,
        label_dropout=args.label_dropout,
        batch=args.batch, steps=args.steps, images=args.images, lr=args.lr, lr_warmup_images=args.lr_warmup,
        lr_cooldown_start=args.lr_cooldown, ema_halflife_images=args.ema_halflife,
        ema_rampup_ratio=_number_or_none(args.ema_rampup, "--ema-rampup"), P_mean=args.p_mean, P_std=args.p_std,
        seed=args.seed, init_from=args.init_from, device=check_device(args.device),
        save_every=args.save_every or None, log_every=args.log_every, progress=not args.no_progress,
        **_objective(args), **ddpmpp)
    try:
        config.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return config


def run(args) -> int:
    import torch

    from skiptune.train import train

    config = config_from_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(True)
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C aborts at once

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: Ctrl-C handling stays as it is
        previous = None
    try:
        result = train(config, resume=args.resume, callback=lambda info: bool(interrupted))
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    recent = result.losses[-config.log_every:]
    loss = f"{sum(recent) / len(recent):.4f}" if recent else "n/a"
    if result.stopped:
        print(f"stopped at step {result.steps}: state saved; continue with --resume")
    print(f"steps       {result.start_step} -> {result.steps} of {config.total_steps()}"
          + (" (resumed)" if result.resumed else ""))
    print(f"loss        {loss} (mean of the last {len(recent)} steps)")
    print(f"time        {result.seconds:.1f} s ({result.seconds_per_step:.3f} s/step)")
    print(f"network     {result.network}")
    return 130 if result.stopped else 0
