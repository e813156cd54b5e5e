"""What every analysis command needs: the model, data, feature network, store and output folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skiptune.store import Store


@dataclass
class AnalysisContext:
    """Resolved common options of ``skiptune analyze``.

    ``model`` is a checkpoint path or preset name (the shipped demo model when None); ``data`` a data
    set spec for :func:`skiptune.train.data.load_dataset` (``digits`` for the demo model);
    ``features`` a registered feature network name (``digits-classifier`` for the demo model).
    """

    model: str | None = None
    data: str = "digits"
    features: str = "digits-classifier"
    weights: str | None = None
    out: Path = Path("analysis-out")
    db: Path | None = Path("runs/results.sqlite")
    device: str = "cpu"
    progress: bool = True
    trust_code: bool = False
    _store: Store | None = field(default=None, init=False, repr=False)

    @cached_property
    def net(self) -> nn.Module:
        from skiptune.demo.assets import DEMO_MODEL, asset_path
        from skiptune.io import load_model

        net = load_model(self.model or asset_path(DEMO_MODEL), trust_code=self.trust_code)
        return net.to(self.device).eval()

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the network's weights (computed once per command)."""
        from skiptune.metrics import state_dict_sha256

        return state_dict_sha256(self.net)

    @property
    def model_id(self) -> str:
        """Short checksum of the weights: the identity of the model in stored results."""
        return self.fingerprint[:16]

    def dataset(self, split: str = "train"):
        from skiptune.train.data import load_dataset

        res = getattr(self.net, "img_resolution", None)
        return load_dataset(self.data, split=split, resolution=res)

    def images(self, split: str = "train", n: int | None = None) -> torch.Tensor:
        """Real images in [-1, 1], the first ``n`` of the split (deterministic)."""
        x = self.dataset(split).images
        return x if n is None else x[:n]

    @cached_property
    def extractor(self):
        from skiptune.metrics import get_extractor

        return get_extractor(self.features, **({"weights": self.weights} if self.weights else {}))

    @cached_property
    def reference(self):
        """Features of the data set's training split (the FID reference)."""
        from skiptune.generate import to_uint8
        from skiptune.metrics import extract_features

        ext = self.extractor
        return extract_features(to_uint8(self.images("train")), ext, features=[ext.feature_for("fid")], keep=False)

    @property
    def store(self) -> Store | None:
        if self.db is None:
            return None
        if self._store is None:
            self._store = Store(self.db)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def describe(self) -> dict[str, Any]:
        return {"model": str(self.model or "shipped demo model"), "model_sha256": self.model_id, "data": self.data}
