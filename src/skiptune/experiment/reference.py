"""FID references and the scorer that measures generated sets against them.

:func:`load_reference` reads what ``--ref`` names: a statistics ``.npz`` (from ``skiptune ref`` or
EDM's reference files) as it is, or a data set (``digits``, ``shapes``, a folder or an ``.npz`` of
images) whose training split is passed through the feature network. :class:`Scorer` holds a
feature network with its reference and is what :func:`skiptune.experiment.scoring` uses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from skiptune.core.errors import InputError
from skiptune.experiment.generate import to_uint8
from skiptune.experiment.specs import ScoringSpec
from skiptune.metrics import FeatureExtractor, FeatureSet, extract_features, fid_from_stats, get_extractor
from skiptune.metrics.featureset import registered_name
from skiptune.metrics.stats import read_npz


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
    if path.suffix.lower() == ".npz" and path.is_file():
        names = read_npz(path, what="reference statistics or images (.npz)", keys=()).files  # errors name the file
        if "mu" in names:
            ref = FeatureSet.load(path)
            check_reference(ref, extractor, spec)
            return ref
    from skiptune.train.data import load_dataset

    data = load_dataset(spec, split="train", resolution=resolution)
    return extract_features(to_uint8(data.images), extractor, features=[extractor.feature_for("fid")], keep=False,
                            progress=progress)


def check_reference(ref: FeatureSet, extractor: FeatureExtractor, spec: str = "the reference") -> None:
    """Refuse, before any sampling, reference statistics that the feature network cannot be compared with: made
    by another network (as recorded in the file), or of another dimension than the network's FID feature."""
    recorded = ref.meta.get("extractor")
    if recorded and recorded != extractor.name:
        registered = registered_name(recorded)
        use = f"score with {registered!r} (--features {registered})" if registered else "score with that network"
        raise InputError(f"{spec} holds {recorded!r} features but the feature network is {extractor.name!r}; "
                         f"{use}, or compute the reference with {extractor.name!r}")
    feature = extractor.feature_for("fid")
    st = ref.stats.get(feature) or (next(iter(ref.stats.values())) if len(ref.stats) == 1 else None)
    dim = (extractor.dims or {}).get(feature)
    if st is not None and dim and st.dim != dim:
        raise InputError(f"{spec} holds {st.dim}-d statistics but {extractor.name!r} gives {dim}-d {feature!r} "
                         "features; compute the reference with the same feature network")


@dataclass(eq=False)
class Scorer:
    """A feature network and its FID reference: scores uint8 image sets and names itself as a ScoringSpec."""

    extractor: FeatureExtractor
    ref: FeatureSet
    _spec: ScoringSpec | None = field(default=None, init=False, repr=False)

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
        """The scoring spec (computed once: naming a reference may hash its covariance)."""
        if self._spec is None:
            st = self.ref.get(self.feature)
            self._spec = ScoringSpec(self.extractor.name, self.extractor.weights_sha256,
                                     reference_id(self.ref, self.feature), int(st.n))
        return self._spec

    def fid(self, images_uint8: torch.Tensor, *, batch_size: int = 250) -> float:
        fs = extract_features(images_uint8, self.extractor, features=[self.feature], keep=False, batch_size=batch_size)
        return float(fid_from_stats(fs.get(self.feature), self.ref.get(self.feature)))
