"""FID references and the scorer that measures generated sets against them.

:func:`load_reference` reads what ``--ref`` names: a statistics ``.npz`` (from ``skiptune ref`` or
EDM's reference files) as it is, or a data set (``digits``, ``shapes``, a folder or an ``.npz`` of
images) whose training split is passed through the feature network. :class:`Scorer` holds a
feature network with its reference and is what :func:`skiptune.experiment.scoring` uses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skiptune.experiment.generate import to_uint8
from skiptune.experiment.specs import ScoringSpec
from skiptune.metrics import FeatureExtractor, FeatureSet, extract_features, fid_from_stats, get_extractor


def reference_id(ref: FeatureSet, feature: str) -> str:
    """What identifies a FID reference in stored run keys.

    Statistics extracted here from images are named by their provenance (source pixels' fingerprint,
    feature network and its weights, feature, count), so the last bits of a recomputation (another
    thread count, another machine) do not change the key; files without that record (e.g. EDM's
    reference .npz) are named by the bytes of their mean and covariance.
    """
    m = ref.meta
    if m.get("source_fingerprint") and m.get("weights_sha256"):
        text = "|".join(str(m.get(k)) for k in ("source_fingerprint", "extractor", "weights_sha256", "n"))
        return hashlib.sha256(f"{text}|{feature}".encode()).hexdigest()
    st = ref.get(feature)
    return hashlib.sha256(np.asarray(st.mean).tobytes() + np.asarray(st.cov).tobytes()).hexdigest()


def load_reference(spec: str, extractor: FeatureExtractor, *, resolution: int | None = None,
                   progress: bool = False) -> FeatureSet:
    """A FeatureSet: a statistics .npz as it is, or the features of a data set's training split (resized to
    ``resolution`` if given, as the model being scored generates)."""
    path = Path(spec)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if "mu" in data.files:
                return FeatureSet.load(path)
    from skiptune.train.data import load_dataset

    data = load_dataset(spec, split="train", resolution=resolution)
    return extract_features(to_uint8(data.images), extractor, features=[extractor.feature_for("fid")], keep=False,
                            progress=progress)


@dataclass(eq=False)
class Scorer:
    """A feature network and its FID reference: scores uint8 image sets and names itself as a ScoringSpec."""

    extractor: FeatureExtractor
    ref: FeatureSet

    @classmethod
    def load(cls, features: str, ref: str, *, weights: str | None = None, device: str = "cpu",
             progress: bool = False) -> Scorer:
        """The scorer of ``--features NAME [--weights FILE] --ref REF``."""
        ext = get_extractor(features, weights=weights, device=device)
        return cls(ext, load_reference(ref, ext, progress=progress))

    @property
    def feature(self) -> str:
        return self.extractor.feature_for("fid")

    def spec(self) -> ScoringSpec:
        st = self.ref.get(self.feature)
        return ScoringSpec(self.extractor.name, self.extractor.weights_sha256, reference_id(self.ref, self.feature),
                           int(st.n))

    def fid(self, images_uint8: torch.Tensor, *, batch_size: int = 250) -> float:
        fs = extract_features(images_uint8, self.extractor, features=[self.feature], keep=False, batch_size=batch_size)
        return float(fid_from_stats(fs.get(self.feature), self.ref.get(self.feature)))
