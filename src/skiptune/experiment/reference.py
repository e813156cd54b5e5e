"""FID references and the scorer that measures generated sets against them.

:func:`load_reference` reads what ``--ref`` names: a statistics ``.npz`` (from ``skiptune ref`` or
EDM's reference files) as it is, checked against the feature network and the images to be scored
(:func:`check_reference`), or a data set (``digits``, ``shapes``, a folder or an ``.npz`` of
images) whose training split is passed through the feature network. :class:`Scorer` holds a
feature network with its reference and is what :func:`skiptune.experiment.scoring` uses.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
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

#: the dimension of the Inception-V3 pool features that EDM's references hold
INCEPTION_POOL_DIM = 2048


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


def load_reference(spec: str, extractor: FeatureExtractor, *, resolution: int | tuple[int, int] | None = None,
                   resize: str | None = None, progress: bool = False) -> FeatureSet:
    """A FeatureSet: a statistics .npz as it is, or the features of a data set's training split.

    ``resolution`` is that of the images the reference will be compared with (the model's ``img_resolution``):
    a data set is resized to it, as the model being scored generates; a statistics file computed from images
    of another resolution is refused. ``resize`` is the resize policy those images go through into the
    feature network (``extractor.preprocessing``); a statistics file that records another is refused. None:
    not checked. Every check happens here, before any sampling (:func:`check_reference`); the single feature
    of a file that records none (an EDM reference) is named as the feature network's FID feature.
    """
    path = Path(spec)
    if path.suffix.lower() == ".npz" and path.is_file():
        names = read_npz(path, what="reference statistics or images (.npz)", keys=()).files  # errors name the file
        if "mu" in names:
            ref = FeatureSet.load(path)
            check_reference(ref, extractor, spec, resolution=resolution, resize=resize)
            return ref.take_as(extractor.feature_for("fid"))
    from skiptune.train.data import load_dataset

    size = _size(resolution)
    if size is not None and size[0] != size[1]:
        raise InputError(f"--ref {spec}: a data set is resized to square images; got the resolution "
                         f"{size[0]}x{size[1]} (give one number, the model's image resolution)")
    data = load_dataset(spec, split="train", resolution=None if size is None else size[0])
    return extract_features(to_uint8(data.images), extractor, features=[extractor.feature_for("fid")], keep=False,
                            progress=progress)


def is_inception(extractor: FeatureExtractor) -> bool:
    """Whether a feature network is a FID Inception-V3 (``inception-v3-tf2015``, ``-custom``, ``-edm-pkl``, ...)."""
    return extractor.name.startswith("inception-v3")


def _size(resolution: int | tuple[int, int] | Sequence[int] | None) -> tuple[int, int] | None:
    if resolution is None:
        return None
    if isinstance(resolution, (int, np.integer)):
        return int(resolution), int(resolution)
    h, w = resolution
    return int(h), int(w)


def _use(recorded: object) -> str:
    registered = registered_name(recorded)
    return f"score with {registered!r} (--features {registered})" if registered else "score with that network"


def check_reference(ref: FeatureSet, extractor: FeatureExtractor, spec: str = "the reference", *,
                    resolution: int | tuple[int, int] | None = None, resize: str | None = None) -> None:
    """Refuse, before any sampling, reference statistics that the images about to be scored cannot be compared with.

    Refused (an :class:`InputError` naming the mismatch and the fix): statistics made by another feature network
    or other weights (as recorded in the file), of another feature than the network's FID feature, of another
    dimension; and, when given, computed from images of another ``resolution`` (an int, or ``(H, W)``) than the
    images being scored, or with another ``resize`` policy on their way into the network (what the feature
    network records as ``resize``, i.e. ``extractor.preprocessing``). None: not checked.

    A file that records nothing (EDM's references hold only ``mu``/``sigma``) is taken as what EDM computes:
    2048-d Inception-V3 pool features of the data set's images at their own resolution, not resized before
    the network. With an Inception feature network that assumption is named in a warning; a network whose
    FID features have another dimension refuses it.
    """
    m = ref.meta
    recorded = m.get("extractor")
    feature = extractor.feature_for("fid")
    if recorded and recorded != extractor.name:
        raise InputError(f"{spec} holds {recorded!r} features but the feature network is {extractor.name!r}; "
                         f"{_use(recorded)}, or compute the reference with {extractor.name!r}")
    theirs, mine = m.get("weights_sha256"), extractor.weights_sha256
    if recorded and theirs and mine and theirs != mine:
        raise InputError(f"{spec} holds {recorded!r} features of weights with sha256 {str(theirs)[:16]}... but the "
                         f"feature network's weights have sha256 {str(mine)[:16]}...; score with the weights the "
                         "reference was computed with (--weights FILE), or compute the reference with these weights "
                         f"(skiptune ref --features {registered_name(recorded) or extractor.name} --weights FILE)")
    st = ref.stats.get(feature)
    if st is None and ref.records_features:
        raise InputError(f"{spec} holds the {', '.join(repr(k) for k in sorted(ref.stats))} features of "
                         f"{recorded or 'its feature network'}, but FID with {extractor.name!r} uses its {feature!r} "
                         f"features; compute the reference with {extractor.name!r} (skiptune ref computes the FID "
                         "feature)")
    if st is None:
        st = next(iter(ref.stats.values())) if len(ref.stats) == 1 else None
    dim = (extractor.dims or {}).get(feature)
    if dim is None and not ref.records_features and is_inception(extractor) and feature == "pool":
        dim = INCEPTION_POOL_DIM  # EDM's pickle declares its dimension on first use
    if st is not None and dim and st.dim != dim:
        hint = ""
        if not ref.records_features and st.dim == INCEPTION_POOL_DIM and not is_inception(extractor):
            hint = (f" ({spec} records no feature network; 2048-d statistics without a record, as EDM's references, "
                    "are Inception-V3 pool features: score with --features inception-v3)")
        raise InputError(f"{spec} holds {st.dim}-d statistics but {extractor.name!r} gives {dim}-d {feature!r} "
                         f"features; compute the reference with the same feature network{hint}")
    theirs_resize = m.get("resize")
    if resize is not None and theirs_resize is not None and theirs_resize != resize:
        raise InputError(f"{spec} was computed with the resize policy {theirs_resize!r} but the images being scored "
                         f"go through {resize!r}; compute the reference with the resize the scoring feature network "
                         f"applies (skiptune ref --data DATA --features {registered_name(extractor.name) or 'NAME'})")
    want, have = _size(resolution), ref.image_size
    if want is not None and have is not None and want != have:
        raise InputError(f"{spec} holds statistics of {have[0]}x{have[1]} images but the images being scored are "
                         f"{want[0]}x{want[1]}; FID compares images at one resolution: use a reference of the data "
                         f"at {want[0]}x{want[1]} (e.g. skiptune ref --data IMAGES with {want[0]}x{want[1]} images, "
                         f"or EDM's reference of the {want[0]}x{want[1]} data set)")
    if not ref.records_features and is_inception(extractor):
        at = f"{want[0]}x{want[1]}" if want is not None else "their own resolution"
        warnings.warn(f"{spec} records no provenance (an EDM reference?): taken as {st.dim if st else '?'}-d "
                      f"Inception-V3 pool features of uint8 images at {at}, not resized before the network, as "
                      "EDM's fid.py computes them", UserWarning, stacklevel=2)


@dataclass(eq=False)
class Scorer:
    """A feature network and its FID reference: scores uint8 image sets and names itself as a ScoringSpec."""

    extractor: FeatureExtractor
    ref: FeatureSet
    _spec: ScoringSpec | None = field(default=None, init=False, repr=False)

    @classmethod
    def load(cls, features: str, ref: str, *, weights: str | None = None, device: str = "cpu",
             progress: bool = False, resolution: int | tuple[int, int] | None = None,
             resize: str | None = None) -> Scorer:
        """The scorer of ``--features NAME [--weights FILE] --ref REF``; ``resolution`` (the model's image
        resolution) and ``resize`` as in :func:`load_reference` (None: not checked). Images this scorer scores
        go through the feature network's own preprocessing, so with a ``resolution`` and no ``resize`` the
        reference's resize policy is checked against it."""
        ext = get_extractor(features, weights=weights, device=device)
        if resolution is not None and resize is None:
            resize = ext.preprocessing
        return cls(ext, load_reference(ref, ext, resolution=resolution, resize=resize, progress=progress))

    @property
    def feature(self) -> str:
        return self.extractor.feature_for("fid")

    def spec(self) -> ScoringSpec:
        """The scoring spec (computed once: naming a reference may hash its covariance)."""
        if self._spec is None:
            st = self.ref.get(self.feature)
            # EDM's reference files record no count: such a reference is named by its id alone (the bytes of
            # its mean and covariance, see reference_id)
            self._spec = ScoringSpec(self.extractor.name, self.extractor.weights_sha256,
                                     reference_id(self.ref, self.feature), int(st.n) if st.n >= 2 else None)
        return self._spec

    def fid(self, images_uint8: torch.Tensor, *, batch_size: int = 250) -> float:
        fs = extract_features(images_uint8, self.extractor, features=[self.feature], keep=False, batch_size=batch_size)
        return float(fid_from_stats(fs.get(self.feature), self.ref.get(self.feature)))
