"""Command line: thin commands that parse and validate options, then call the library.

Each command lives in its own module with ``register(subparsers)``; add new modules to
``COMMAND_MODULES``. The library never reads ``sys.argv``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from skiptune.core.errors import SkiptuneError, UsageError

COMMAND_MODULES = [
    "skiptune.cli.info",
    "skiptune.cli.sample",
    "skiptune.cli.demo",
    "skiptune.cli.metrics",
    "skiptune.cli.train",
    "skiptune.cli.runs",
    "skiptune.cli.sweep",
    "skiptune.cli.reproduce",
    "skiptune.cli.compare",
    "skiptune.cli.analyze",
]


#: help of options that mean the same in every command that has them (used where a command gives none)
STANDARD_HELP = {
    "--device": "torch device: cpu, cuda or cuda:N",
    "--no-progress": "no progress bars",
    "--batch": "samples per network batch (part of a stored run's identity: round-off may depend on it)",
    "--mode": "where rho acts: concat (seed 003 Def. 3.1), residual or norm (App. C)",
    "--grid": "sigma grid: edm (rho = 7), logsnr, vp_time_uniform, vp_time_quadratic; discrete-time-uniform "
              "(DPM-Solver's time-uniform steps of a discrete-time model); discrete, discrete-trailing "
              "(the trained timesteps of DDPM models)",
    "--sampler": "sampler: euler, heun, edm_sde, ddim, dpmpp_2m, dpmpp_3m, dpmpp_3m_order3, unipc, deis, ipndm, "
                 "consistency (nfe 1: one-step generation)",
    "--samplers": "comma-separated samplers (euler, heun, edm_sde, ddim, dpmpp_2m, dpmpp_3m, dpmpp_3m_order3, unipc, "
                  "deis, ipndm, consistency)",
    "--nfe": "denoiser evaluations per sample (comma-separated where several are allowed)",
    "--seed-sets": "number of disjoint seed sets: the first is --seeds, the others shifted copies",
    "--sigma-min": "lowest noise level of the grid (default: the network's trained range, else 0.002)",
    "--sigma-max": "highest noise level of the grid (default: the network's trained range, else 80)",
    "--rules": "';'-separated rules; LO:HI:STEP ranges (layer:0.5:1.5:0.1 = rho_bottom 0.5..1.5) and one "
               "{LO..HI:STEP} template (ramp:down:{0.6..1:0.1}) expand to several",
    "--lo": "lowest rho searched", "--hi": "highest rho searched", "--step": "finest spacing of the rho lattice",
    "--coarse-step": "spacing of the first, coarse rung (a whole number of --step)",
    "--out": "output file", "--images": "generated images: a folder, an .npz of images, or a built-in data set",
    "--kid-subset-size": "samples per KID subset", "--kid-subsets": "number of KID subsets",
    "--seed": "seed of the noise draws", "--ncols": "images per row of a grid",
    "--rho-steps": "optimizer steps of each rho fit", "--rho-batch": "images per step of the rho fits",
    "--rho-lr": "learning rate of the rho fits", "--full-batch": "images per step of the full fine-tuning",
    "--full-lr": "learning rate of the full fine-tuning", "--fid-batch": "samples per batch of the FID points",
    "--db": "results store (SQLite file)",
}


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and not action.required
        if shown and action.option_strings and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _finish(parser: argparse.ArgumentParser) -> None:
    """Give every command the formatter and every option without help the standard one, recursively."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _finish(sub)
        elif action.option_strings and not action.help:
            action.help = STANDARD_HELP.get(action.option_strings[-1])


def build_parser() -> argparse.ArgumentParser:
    from skiptune import __version__

    parser = argparse.ArgumentParser(prog="skiptune", description="Training-free Skip-Tuning of diffusion UNets.")
    parser.add_argument("--version", action="version", version=f"skiptune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _finish(parser)
    return parser


def parse_list(text: str, convert=str, *, flag: str, what: str = "values", sep: str = ",") -> tuple:
    """``"0.7,1"`` -> ``(0.7, 1.0)`` with ``convert``; UsageError naming ``flag`` if an item does not convert
    or the list is empty (``what`` says what the items should be)."""
    try:
        items = tuple(convert(v.strip()) for v in (text or "").split(sep) if v.strip())
    except ValueError:
        items = ()
    if not items:
        raise UsageError(f"{flag} must be {'comma' if sep == ',' else repr(sep)}-separated {what}, got {text!r}")
    return items


def with_flags(exc: SkiptuneError, flags: Mapping[str, str]) -> SkiptuneError:
    """``exc`` again (same class), its message naming the command's flags where the library names Python
    parameters, e.g. ``pass weights='/path'`` -> ``pass --weights '/path'``."""
    text = str(exc)
    for param, flag in flags.items():
        text = text.replace(param, flag)
    return type(exc)(text)


# -- options shared by the commands that score samples (sweep, search, compare-training, analyze, ref, eval) --

#: Python parameters that library messages name, and the flags a user of these commands types instead
WEIGHTS_FLAG = {"weights='": "--weights '", "weights=": "--weights "}
DEFAULT_FEATURES = "digits-classifier"


def check_weights(weights: str | None) -> None:
    """``--weights PATH`` must exist (a file, or a folder holding the file) before anything is loaded."""
    if weights is not None and not Path(weights).exists():
        raise UsageError(f"--weights {weights}: no such file or folder")


def check_db(db: str | Path) -> None:
    """``--db PATH`` checked before models and references load: an existing store is opened and read through
    (corrupt, read-only, newer: an error now, its file unchanged); for a new one, its folder must be writable
    (nothing is created until there are results)."""
    from skiptune.experiment import open_store
    from skiptune.store.database import check_new_store

    if Path(db).exists():
        with open_store(db, create=False) as store:
            store.verify()
    else:
        check_new_store(db)


def scoring_features(features: str | None, ref: str | None, default: str = DEFAULT_FEATURES) -> str:
    """``--features``, else the feature network recorded in ``--ref`` statistics, else ``default``."""
    from skiptune.metrics.featureset import recorded_extractor

    return features or (recorded_extractor(ref) if ref else None) or default


def check_device(name: str) -> str:
    """``--device NAME`` checked before any work: a device torch knows, and CUDA only where it is available."""
    from skiptune.core.checks import device

    try:
        return str(device(name, what="--device"))
    except SkiptuneError as exc:
        raise UsageError(str(exc)) from None


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--model PATH`` and/or ``--arch PRESET``, and ``--trust-code``, shared by commands that load a network."""
    p.add_argument("--model", metavar="PATH", help="skiptune .safetensors checkpoint, EDM network .pkl, or a raw "
                   "state dict (.pt/.pth/.safetensors; public U-ViT .pth and guided-diffusion / consistency-models "
                   ".pt files are recognised), or a diffusers save_pretrained folder")
    p.add_argument("--arch", metavar="PRESET", help="a named preset, e.g. adm-imagenet64, ddpmpp-tiny, uvit-tiny: "
                   "alone, random weights; with --model, the architecture of a raw state dict")
    p.add_argument("--trust-code", action="store_true",
                   help="UNSAFE: unpickle EDM files with Python's stock loader, executing code they contain")


def open_from_args(args: argparse.Namespace):
    """The :class:`~skiptune.io.LoadedModel` of ``--model`` / ``--arch`` / ``--trust-code``."""
    from skiptune.io import open_model

    if not args.model and not args.arch:
        raise UsageError("give --model PATH, --arch PRESET, or both (a raw state dict and its architecture)")
    if args.model:
        return open_model(args.model, arch=args.arch, trust_code=getattr(args, "trust_code", False))
    return open_model(args.arch)


def load_from_args(args: argparse.Namespace):
    """The network of :func:`open_from_args`."""
    return open_from_args(args).net


def main(argv: list[str] | None = None) -> int:
    """Run one command. A :class:`~skiptune.core.errors.SkiptuneError` (raised on purpose, its message names
    the problem and the fix) prints one line and exits 2, with its traceback under ``--debug``; any other
    exception is a bug and shows its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "device", None) is not None:  # one device check for every command, before any work
            args.device = check_device(args.device)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # output still buffered fails here, inside the try, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader of our output went away (`skiptune runs --db X | head -1`): stop quietly. Exit status 141
        # (128 + SIGPIPE), what the shell reports for `yes | head -1` and other Unix tools killed by SIGPIPE,
        # so that `set -o pipefail` scripts see the truncation as they do for those tools. Point stdout at
        # /dev/null so that flushing what is still buffered at exit does not raise again.
        import os

        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # stdout is not a file descriptor (captured, closed)
            pass
        return 141
    except SkiptuneError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"skiptune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"skiptune {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        from skiptune.distributed import close_distributed

        close_distributed()
