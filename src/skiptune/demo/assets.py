"""Shipped assets: how to load them, and the domain feature extractor (their location: :mod:`skiptune.core.assets`).

``skiptune/assets/`` holds the demo diffusion model (``demo-digits.safetensors``), the digits
classifier used as its domain feature network (``digits-classifier.safetensors``) and the feature
network of the procedural shapes (``shapes-classifier.safetensors``), each with the JSON config and
training log of the recipe that made it (``make demo-assets``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from skiptune.core.assets import (  # noqa: F401 - the asset names are part of this module's interface
    CLASSIFIER,
    DEMO_MODEL,
    SHAPES_CLASSIFIER,
    asset_path,
    assets_dir,
)
from skiptune.core.errors import InputError

CLASSIFIER_EXTRACTOR = "digits-classifier"


def save_classifier(model, path: str | os.PathLike, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"skiptune-classifier": json.dumps({"config": model.config(), "extra": extra or {}})}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


def classifier_metadata(path: str | os.PathLike | None = None) -> dict:
    """``{"config": constructor kwargs, "extra": the recipe's record}`` of a classifier file (default: shipped)."""
    from safetensors import safe_open

    path = Path(path) if path is not None else asset_path(CLASSIFIER)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("skiptune-classifier", "{}"))
    if "config" not in meta:
        raise InputError(f"{path} is not a skiptune classifier checkpoint")
    return {"config": meta["config"], "extra": meta.get("extra", {})}


def load_classifier(path: str | os.PathLike | None = None):
    """The digits classifier (``SmallClassifier``) from a safetensors file (default: the shipped one)."""
    from safetensors.torch import load_file

    from skiptune.nets.classifier import SmallClassifier

    path = Path(path) if path is not None else asset_path(CLASSIFIER)
    model = SmallClassifier(**classifier_metadata(path)["config"])
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def digits_classifier_extractor(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """``digits-classifier``: the shipped digits classifier as feature network (entry point of skiptune.extractors)."""
    return classifier_extractor(weights, device)


def shapes_classifier_extractor(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """``shapes-classifier``: the shipped shapes classifier as feature network (entry point of skiptune.extractors)."""
    return classifier_extractor(weights if weights is not None else asset_path(SHAPES_CLASSIFIER), device)


def classifier_extractor(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """A domain classifier as feature network: 64-d penultimate features (FID, KID, P/R, MMD), logits (IS).

    Default: the shipped digits classifier. Input images (uint8, any size) are mapped to [-1, 1],
    averaged to gray for a 1-channel classifier (a gray input is repeated for a 3-channel one), and
    resized to the classifier's resolution (bilinear, antialiased) when needed. The extractor is
    named after the data the classifier was trained on (``digits-classifier``, ``shapes-classifier``).
    """
    import torch.nn.functional as F

    from skiptune.metrics.extractor import FeatureExtractor, file_sha256

    path = Path(weights) if weights is not None else asset_path(CLASSIFIER)
    model = load_classifier(path).to(device)
    res, channels = model.resolution, model.in_channels
    data = classifier_metadata(path)["extra"].get("data", "digits")

    def fn(x: torch.Tensor, wanted):
        y = x.to(torch.float32)
        if channels == 1:
            y = y.mean(dim=1, keepdim=True)
        elif y.shape[1] == 1:
            y = y.expand(-1, channels, -1, -1)
        y = y / 127.5 - 1
        if y.shape[-1] != res:
            y = F.interpolate(y, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
        return model.features(y)

    colour = "gray mean" if channels == 1 else "RGB (gray repeated)"
    return FeatureExtractor(
        name=f"{data}-classifier", fn=fn, dims={"features": model.feature_dim, "logits": model.num_classes},
        preprocessing=f"{colour}, [-1,1], bilinear-antialias to {res}x{res} if needed",
        weights_sha256=file_sha256(path), metric_features={"is": "logits"}, default_feature="features",
        device=device, module=model)
