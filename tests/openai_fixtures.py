"""The openai UNet fixtures of tests/data/openai_unet (made by its make_fixtures.py from the public code)."""

import importlib.util
import json
import math
from pathlib import Path

import torch
from safetensors import safe_open

DATA = Path(__file__).parent / "data" / "openai_unet"


def _maker():
    spec = importlib.util.spec_from_file_location("openai_unet_fixtures", DATA / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: make_fixtures.py as a module: ``weights`` rebuilds a fixture's weights, ``state_sha256`` checks them
MAKER = _maker()


def load_fixture(name: str):
    """``(metadata, stored tensors, [(name, shape)], weights)`` of fixture ``name``; the weights are checked
    against the sha256 of those the public code ran with."""
    with safe_open(str(DATA / f"{name}.safetensors"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    keys = [(k, list(s)) for k, s in json.loads(meta["keys"])]
    state = MAKER.weights(keys, int(meta["seed"]))
    assert MAKER.state_sha256(state) == meta["weights_sha256"]
    return meta, tensors, keys, state


def time_features(model_channels: int, t: torch.Tensor) -> torch.Tensor:
    """The openai UNet's sinusoidal time features [cos, sin], written out for the hand-made reference passes."""
    half = model_channels // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    arg = t[:, None] * freqs[None]
    return torch.cat([arg.cos(), arg.sin()], 1)
