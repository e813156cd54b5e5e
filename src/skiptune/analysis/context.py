"""What every analysis command needs: the model, data, scorer (feature network and reference), store."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skiptune.core.denoiser import DenoiserInfo
from skiptune.core.errors import InputError
from skiptune.experiment import ModelRef, Scorer, load_reference, open_store
from skiptune.io import LoadedModel
from skiptune.store import Store

DEFAULT_MODEL = "demo-digits"


@dataclass
class AnalysisContext:
    """Resolved common options of ``skiptune analyze``; each part is loaded once, on first use.

    ``model`` is a checkpoint path, shipped model or preset name (the shipped ``demo-digits`` when
    None); ``data`` a data set spec for :func:`skiptune.train.data.load_dataset` (``digits`` for the
    demo model); ``features`` a registered feature network name (``digits-classifier`` for it).
    """

    model: str | None = None
    data: str = "digits"
    features: str = "digits-classifier"
    weights: str | None = None
    out: Path = Path("runs/analysis")
    db: Path | None = Path("runs/results.sqlite")
    device: str = "cpu"
    progress: bool = True
    trust_code: bool = False
    _store: Store | None = field(default=None, init=False, repr=False)

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODEL

    @cached_property
    def loaded(self) -> LoadedModel:
        from skiptune.io import open_model

        return open_model(self.model_name, trust_code=self.trust_code)

    @cached_property
    def net(self) -> nn.Module:
        return self.loaded.net.to(self.device).eval()

    @cached_property
    def model_ref(self) -> ModelRef:
        """The model's identity in stored results (sha256 of the weights, computed once per command)."""
        return ModelRef.of(self.loaded)

    @property
    def fingerprint(self) -> str:
        return self.model_ref.sha256

    def dataset(self, split: str = "train"):
        """The ``split`` of ``data`` at the model's resolution (a split the data does not have is an error
        naming ``--split``/``--data``, before the model loads)."""
        from skiptune.train.data import SPLITS, load_dataset

        if split not in SPLITS:
            raise InputError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
        if self.data == "shapes" and split == "all":
            raise InputError("--split all: the shapes data set has a train and a test split; pick one")
        if split == "test" and self.data not in ("digits", "shapes") and Path(self.data).exists():
            raise InputError(f"--data {self.data}: an image folder or .npz file has no held-out test split; use "
                             "--split train for all its images, or give the held-out images as --data")
        res = DenoiserInfo.of(self.net).img_resolution
        return load_dataset(self.data, split=split, resolution=res)

    def images(self, split: str = "train", n: int | None = None) -> torch.Tensor:
        """Real images in [-1, 1], the first ``n`` of the split (deterministic)."""
        x = self.dataset(split).images
        return x if n is None else x[:n]

    @cached_property
    def extractor(self):
        from skiptune.metrics import get_extractor

        return get_extractor(self.features, weights=self.weights, device=self.device)

    @cached_property
    def scorer(self) -> Scorer:
        """The feature network with the data set's training split as FID reference."""
        res = DenoiserInfo.of(self.net).img_resolution
        return Scorer(self.extractor, load_reference(self.data, self.extractor, resolution=res))

    @property
    def reference(self):
        return self.scorer.ref

    @property
    def store(self) -> Store | None:
        if self.db is None:
            return None
        if self._store is None:
            self._store = open_store(self.db)
        return self._store

    def check_store(self) -> None:
        """Check the results store before the model, data and feature network load: an existing store is opened
        now (a corrupt, read-only or newer one fails here); for a new one, its folder must be writable, and the
        store is created when the first result is stored."""
        from skiptune.store.database import check_new_store

        if self.db is None:
            return
        if self.db.exists():
            self.store.verify()
        else:
            check_new_store(self.db)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "model_sha256": self.fingerprint, "data": self.data}
