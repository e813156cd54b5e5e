"""Where the files shipped inside the package live (the demo model and the domain classifiers).

``skiptune/assets/`` holds each asset with the JSON config and training log of the recipe that made
it (``make demo-assets``). Shipped models have names usable wherever a model is accepted:
``demo-digits`` is the demo's diffusion model. Standard library only.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from skiptune.core.errors import MissingFileError

DEMO_MODEL = "demo-digits.safetensors"
CLASSIFIER = "digits-classifier.safetensors"
SHAPES_CLASSIFIER = "shapes-classifier.safetensors"
#: model names that load a shipped asset (``--model demo-digits``)
SHIPPED_MODELS = {"demo-digits": DEMO_MODEL}


def assets_dir() -> Path:
    """The package's asset folder (overridable with $SKIPTUNE_ASSETS, e.g. for freshly made assets)."""
    override = os.environ.get("SKIPTUNE_ASSETS")
    return Path(override) if override else Path(str(resources.files("skiptune") / "assets"))


def asset_path(name: str) -> Path:
    path = assets_dir() / name
    if not path.exists():
        raise MissingFileError(f"shipped asset {path} is missing; rebuild it with `make demo-assets` "
                               "(or point $SKIPTUNE_ASSETS at a folder that has it)")
    return path
