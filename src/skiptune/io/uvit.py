"""Public U-ViT checkpoints: a ``.pth`` state dict of the network (``nnet_ema.pth`` and the like).

The file is read with ``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers, so no code from it runs. The architecture is the preset given by ``arch``, or
the one U-ViT preset whose parameter names and shapes match the file exactly. Shapes cannot tell
the number of heads or the noise schedule, which is why only presets are matched.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from skiptune.core.errors import CheckpointError
from skiptune.nets.presets import PRESETS, build_preset, preset_config
from skiptune.nets.uvit import UViTPrecond

#: keys that every U-ViT state dict holds, whatever its configuration
UVIT_KEYS = ("pos_embed", "patch_embed.proj.weight", "decoder_pred.weight", "mid_block.attn.qkv.weight")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights-only torch file; a ``state_dict`` entry and a ``module.`` prefix are unwrapped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable weights-only torch file (it may need code to load, which "
                              f"skiptune never runs, or be truncated): {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


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
        raise CheckpointError(f"{path}: not a U-ViT state dict (no {', '.join(missing)}); a raw state dict of "
                              "another network needs arch=PRESET (--arch)")
    if arch is None:
        arch = infer_uvit_preset(state, path)
    elif preset_config(arch)[0] != "UViTPrecond":
        raise CheckpointError(f"{path} holds U-ViT weights but preset {arch} is not a U-ViT; use one of "
                              f"{', '.join(uvit_presets())}")
    net = build_preset(arch)
    try:
        net.model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: tensors do not match preset {arch}: {exc}") from None
    return net.eval()
