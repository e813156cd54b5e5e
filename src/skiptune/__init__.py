"""skiptune: training-free Skip-Tuning of diffusion UNets (Ma et al., "The Surprising Effectiveness of
Skip-Tuning in Diffusion Sampling").

    import skiptune
    net = skiptune.load_model("model.safetensors")     # or an EDM .pkl, or a preset name
    with skiptune.skip_tuning(net, "layer:0.7"):        # rho 0.7 innermost -> 1.0 outermost
        x0 = net(x, sigma)

The names below are loaded on first use, so that light parts (``skiptune.store``, ``skiptune.core``)
import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "skiptune.io",
    "open_model": "skiptune.io",
    "save_checkpoint": "skiptune.io",
    "parse_rule": "skiptune.skip",
    "skip_sites": "skiptune.skip",
    "skip_tuning": "skiptune.skip",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'skiptune' has no attribute {name!r}")
