"""Public OpenAI UNet checkpoints: a ``.pt`` state dict of guided-diffusion, improved-diffusion or consistency_models
(``64x64_diffusion.pt``, ``cd_imagenet64_l2.pt``, ...).

The file is read with ``torch.load(weights_only=True)`` (:func:`skiptune.io.uvit.read_state_dict`), so no code
from it runs. Its keys are those of the bare UNet (``input_blocks.0.0.weight``, ...); the network is the preset
named by ``arch``, or the one OpenAI UNet preset whose parameter names and shapes match the file exactly. Shapes
cannot tell the noise schedule, the parameterization or the number of heads, which is why only presets are
matched; a file of another configuration needs a preset with that configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from skiptune.core.errors import CheckpointError
from skiptune.io.uvit import load_strict, read_state_dict
from skiptune.nets.openai_unet import OPENAI_PRECOND_CLASSES
from skiptune.nets.presets import PRESETS, build_preset, preset_config

#: keys that every OpenAI UNet state dict holds, whatever its configuration
OPENAI_UNET_KEYS = ("time_embed.0.weight", "input_blocks.0.0.weight", "middle_block.0.in_layers.0.weight",
                    "out.2.weight")


def is_openai_unet_state(state: dict) -> bool:
    return all(k in state for k in OPENAI_UNET_KEYS)


#: the denoisers whose inner network is the whole of a public .pt state dict (an LDM checkpoint also holds its
#: conditioning and first stage: skiptune.io.ldm)
_BARE_UNET_CLASSES = frozenset(OPENAI_PRECOND_CLASSES) - {"LDMPrecond"}


def openai_unet_presets() -> list[str]:
    return sorted(name for name, (cls, _) in PRESETS.items() if cls in _BARE_UNET_CLASSES)


def _preset_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a preset's UNet, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_preset(name).model.state_dict().items()}


def _fix() -> str:
    return (f"pass the preset of the file's configuration as arch (--arch): one of {', '.join(openai_unet_presets())}, "
            "or add a preset with its configuration to skiptune.nets.presets")


def match_preset(shapes: dict[str, tuple[int, ...]], names: list[str], preset_shapes, path, what: str, fix: str) -> str:
    """The single preset of ``names`` whose (``preset_shapes(name)``) parameter names and shapes are ``shapes``; a
    CheckpointError describing the file as ``what`` and naming ``fix`` when none or several match."""
    found = [name for name in names if preset_shapes(name) == shapes]
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(f"{path}: {what} matches no preset; {fix}")
    raise CheckpointError(f"{path}: {what} matches several presets ({', '.join(found)}); name one with arch (--arch)")


def infer_openai_unet_preset(state: dict, path: str | os.PathLike = "state dict") -> str:
    """The single OpenAI UNet preset whose inner network has exactly these parameter names and shapes."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    width = shapes.get("input_blocks.0.0.weight", (0,))[0]
    return match_preset(shapes, openai_unet_presets(), _preset_shapes, path,
                        f"an OpenAI UNet state dict (model_channels {width}, {len(shapes)} tensors)", _fix())


def load_openai_unet(path: str | os.PathLike, arch: str | None = None,
                     state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A public OpenAI UNet state dict as the denoiser of preset ``arch`` (inferred from the shapes when None).

    A file whose names or shapes differ from the preset's is a :class:`CheckpointError` naming the mismatching
    keys and the fix.
    """
    path = Path(path)
    if state is None:
        state = read_state_dict(path)
    if not is_openai_unet_state(state):
        missing = [k for k in OPENAI_UNET_KEYS if k not in state]
        raise CheckpointError(f"{path}: not an OpenAI UNet state dict (no {', '.join(missing)})")
    if arch is None:
        arch = infer_openai_unet_preset(state, path)
    elif preset_config(arch)[0] not in _BARE_UNET_CLASSES:
        raise CheckpointError(f"{path} holds OpenAI UNet weights (guided-diffusion / consistency_models) but preset "
                              f"{arch} is not an OpenAI UNet; use one of {', '.join(openai_unet_presets())}")
    net = build_preset(arch)
    try:
        load_strict(net.model, state, path, f"preset {arch}")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {_fix()}") from None
    return net.eval()
