"""Public U-ViT checkpoints: a ``.pth`` state dict of the network (``nnet_ema.pth`` and the like).

The file is read with ``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers, so no code from it runs. The architecture is the preset given by ``arch``, or
the one U-ViT preset whose parameter names and shapes match the file exactly. Shapes cannot tell
the number of heads or the noise schedule, which is why only presets are matched.

This module also holds the state-dict helpers every loader shares: :func:`read_state_dict` (a raw
``.pt``/``.pth`` file), :func:`load_strict` (load with ``strict=True``; a mismatch is summarised as counts
and the first few keys of each kind, not a list of every key) and :func:`guess_architecture` (what a set
of keys looks like: a U-ViT, an EDM SongUNet, a diffusers UNet, ...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from skiptune.core.errors import CheckpointError
from skiptune.nets.presets import PRESETS, build_preset, preset_config
from skiptune.nets.uvit import UViTPrecond

#: keys that every U-ViT state dict holds, whatever its configuration
UVIT_KEYS = ("pos_embed", "patch_embed.proj.weight", "decoder_pred.weight", "mid_block.attn.qkv.weight")


def file_contents(path: str | os.PathLike) -> str:
    """What a file holds, judged from its first bytes (``'a text file (it starts with ...)'``), for errors."""
    from skiptune.metrics.stats import describe_contents  # the one file sniffer; imported only on an error

    return describe_contents(path)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights-only torch file; a ``state_dict`` entry and a ``module.`` prefix are unwrapped.

    A file torch cannot read is a :class:`CheckpointError` that says what the file is instead (a text file,
    an HTML page, ...) or, for a torch archive or pickle, why it could not be read.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        what = file_contents(path)
        if what not in ("a ZIP archive", "a Python pickle"):
            raise CheckpointError(f"{path}: not a readable weights-only torch file (.pt/.pth): it is {what}, "
                                  "not a file written by torch.save") from None
        raise CheckpointError(f"{path}: not a readable weights-only torch file (it may need code to load, which "
                              f"skiptune never runs, or be truncated): {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


# -- what a state dict is, and how it differs from a network's --------------------------------------------------

_FIRST = 3  # keys shown of each kind of mismatch


def _common_prefix(keys: Iterable[str]) -> str:
    """The longest dotted prefix (``'model.'``) that every key starts with and that leaves a name after it."""
    split = [k.split(".") for k in keys]
    if not split:
        return ""
    out = []
    for parts in zip(*(p[:-1] for p in split), strict=False):
        if len(set(parts)) != 1:
            break
        out.append(parts[0])
    return "".join(f"{p}." for p in out)


def _grid_size(keys: Iterable[str]) -> int:
    sizes = [int(m.group(1)) for k in keys if (m := re.match(r"enc\.(\d+)x\1_", k))]
    return max(sizes, default=0)


def guess_architecture(state: Mapping[str, torch.Tensor] | Mapping[str, Sequence[int]]) -> str | None:
    """What the keys (and shapes) of a state dict look like, for error messages: ``'a U-ViT (embed_dim 512,
    13 blocks)'``, ``'an EDM SongUNet (DDPM++/NCSN++; 32x32, 3 channels, model_channels 128)'``, ``'a diffusers
    UNet'``, ...; None if they look like nothing known. Wrapper prefixes (``model.``, ``module.``) are ignored."""
    prefix = _common_prefix(state)
    keys = {k[len(prefix):]: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in state.items()}
    if "pos_embed" in keys and "patch_embed.proj.weight" in keys:
        blocks = sum(1 for k in keys if k.endswith(".norm1.weight"))
        return f"a U-ViT (embed_dim {keys['pos_embed'][-1]}, {blocks} blocks)"
    if "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys):
        return "a diffusers UNet (load its save_pretrained folder, not a weights file)"
    if any(k.startswith("input_blocks.") for k in keys) and any(k.startswith("output_blocks.") for k in keys):
        return ("an openai UNet (guided-diffusion / consistency models) in its original layout: load it with "
                "--arch adm-guided-imagenet64 or cd-imagenet64 (or the preset of its configuration)")
    if any(k.startswith("all_modules.") for k in keys):
        return "a score_sde NCSN++/DDPM++ in its original layout (skiptune loads these from EDM's converted pickles)"
    res = _grid_size(keys)
    if res:
        conv = keys.get(f"enc.{res}x{res}_conv.weight", ())
        shape = f"{res}x{res}" + (f", {conv[1]} channel{'s' if conv[1] != 1 else ''}, model_channels {conv[0]}"
                                  if len(conv) == 4 else "")
        if any("_aux_" in k for k in keys):
            return f"an EDM SongUNet (DDPM++/NCSN++; {shape})"
        if "out_conv.weight" in keys:
            return f"an EDM DhariwalUNet (ADM; {shape})"
        return f"an EDM UNet ({shape})"
    return None


def _listed(keys: Sequence[str]) -> str:
    more = len(keys) - _FIRST
    return ", ".join(keys[:_FIRST]) + (f", ... ({more} more)" if more > 0 else "")


def describe_mismatch(expected: Mapping[str, Sequence[int]], given: Mapping[str, torch.Tensor]) -> str | None:
    """How the tensors ``given`` (a file's state dict) differ from the ``expected`` names and shapes (a network's),
    in one line: counts of missing, unexpected and mis-shaped keys, the first few of each, a prefix that differs,
    and what the file's keys look like; None if they fit."""
    shapes = {k: tuple(v.shape) for k, v in given.items()}
    expected = {k: tuple(v) for k, v in expected.items()}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    misshaped = [k for k in expected if k in shapes and shapes[k] != expected[k]]
    if not (missing or unexpected or misshaped):
        return None
    parts = [f"{len(missing)} missing, {len(unexpected)} unexpected and {len(misshaped)} mis-shaped keys (the "
             f"network has {len(expected)} tensors, the file {len(shapes)})"]
    ours, theirs = _common_prefix(expected), _common_prefix(shapes)
    if ours != theirs and {ours + k[len(theirs):] for k in shapes} == set(expected):
        parts.append(f"the keys differ only by their prefix: the file's start with {theirs or '(no prefix)'!r}, "
                     f"the network's with {ours or '(no prefix)'!r}")
    else:
        if missing:
            parts.append(f"missing: {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected: {_listed(unexpected)}")
        if misshaped:
            shown = [f"{k} {list(shapes[k])} in the file, {list(expected[k])} in the network" for k in misshaped]
            parts.append(f"mis-shaped: {_listed(shown)}")
    guess = guess_architecture(given)
    if guess:
        parts.append(f"these keys look like {guess}")
    return "; ".join(parts)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike,
                what: str) -> nn.Module:
    """``module.load_state_dict(state, strict=True)``; a mismatch is a :class:`CheckpointError` naming ``source``
    and ``what`` the tensors were loaded into, with :func:`describe_mismatch`'s summary."""
    summary = describe_mismatch({k: tuple(v.shape) for k, v in module.state_dict().items()}, state)
    if summary:
        raise CheckpointError(f"{source}: tensors do not match {what}: {summary}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a tensor that cannot be copied (dtype)
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{source}: tensors do not match {what}: {first[-1].strip() if first else exc}") \
            from None
    return module


def is_uvit_state(state: dict) -> bool:
    return all(k in state for k in UVIT_KEYS)


def uvit_presets() -> list[str]:
    return sorted(name for name, (cls, _) in PRESETS.items() if cls == "UViTPrecond")


def _shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _preset_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a preset's network, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return _shapes(build_preset(name).model)


def infer_uvit_preset(state: dict, path: str | os.PathLike = "state dict") -> str:
    """The single U-ViT preset whose inner network has exactly these parameter names and shapes."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    found = [name for name in uvit_presets() if _preset_shapes(name) == shapes]
    if len(found) == 1:
        return found[0]
    blocks = sum(1 for k in state if k.endswith(".norm1.weight"))
    dim = shapes.get("pos_embed", (0, 0, 0))[-1]
    what = f"a U-ViT with embed_dim {dim} and {blocks} blocks"
    if not found:
        raise CheckpointError(f"{path}: {what} matches no U-ViT preset ({', '.join(uvit_presets())}); add a preset "
                              "with its configuration to skiptune.nets.presets and pass it as arch (--arch)")
    raise CheckpointError(f"{path}: {what} matches several presets ({', '.join(found)}); name one with arch (--arch)")


def load_uvit(path: str | os.PathLike, arch: str | None = None,
              state: dict[str, torch.Tensor] | None = None) -> UViTPrecond:
    """A public U-ViT state dict as a :class:`UViTPrecond` of preset ``arch`` (inferred when None)."""
    path = Path(path)
    if state is None:
        state = read_state_dict(path)
    if not is_uvit_state(state):
        missing = [k for k in UVIT_KEYS if k not in state]
        guess = guess_architecture(state)
        raise CheckpointError(f"{path}: not a U-ViT state dict (no {', '.join(missing)})"
                              + (f"; its keys look like {guess}" if guess else "")
                              + "; a raw state dict of another network needs arch=PRESET (--arch)")
    if arch is None:
        arch = infer_uvit_preset(state, path)
    elif preset_config(arch)[0] != "UViTPrecond":
        raise CheckpointError(f"{path} holds U-ViT weights but preset {arch} is not a U-ViT; use one of "
                              f"{', '.join(uvit_presets())}")
    net = build_preset(arch)
    load_strict(net.model, state, path, f"preset {arch}")
    return net.eval()
