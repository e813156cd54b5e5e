"""Command line: thin commands that parse and validate options, then call the library.

Each command lives in its own module with ``register(subparsers)``; add new modules to
``COMMAND_MODULES``. The library never reads ``sys.argv``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "skiptune.cli.info",
    "skiptune.cli.sample",
    "skiptune.cli.demo",
    "skiptune.cli.metrics",
    "skiptune.cli.train",
    "skiptune.cli.runs",
    "skiptune.cli.sweep",
    "skiptune.cli.compare",
    "skiptune.cli.analyze",
]


class UsageError(ValueError):
    """A command-line option is invalid (reported without a traceback)."""


def build_parser() -> argparse.ArgumentParser:
    from skiptune import __version__

    parser = argparse.ArgumentParser(prog="skiptune", description="Training-free Skip-Tuning of diffusion UNets.")
    parser.add_argument("--version", action="version", version=f"skiptune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--model PATH`` and/or ``--arch PRESET``, and ``--trust-code``, shared by commands that load a network."""
    p.add_argument("--model", metavar="PATH", help="skiptune .safetensors checkpoint, EDM network .pkl, or a raw "
                   "state dict (.pt/.pth/.safetensors; public U-ViT .pth files are recognised), or a diffusers "
                   "save_pretrained folder")
    p.add_argument("--arch", metavar="PRESET", help="a named preset, e.g. adm-imagenet64, ddpmpp-tiny, uvit-tiny: "
                   "alone, random weights; with --model, the architecture of a raw state dict")
    p.add_argument("--trust-code", action="store_true",
                   help="UNSAFE: unpickle EDM files with Python's stock loader, executing code they contain")


def load_from_args(args: argparse.Namespace):
    from skiptune.io import load_model

    if not args.model and not args.arch:
        raise UsageError("give --model PATH, --arch PRESET, or both (a raw state dict and its architecture)")
    if args.model:
        return load_model(args.model, arch=args.arch, trust_code=getattr(args, "trust_code", False))
    return load_model(args.arch)


def main(argv: list[str] | None = None) -> int:
    from skiptune.io.edm_pickle import CheckpointError, UnsafePickleError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, CheckpointError, UnsafePickleError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"skiptune {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"skiptune {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        from skiptune.distributed import close_distributed

        close_distributed()
