"""Sample-quality metrics: feature extractors -> streaming statistics -> distances.

Layers (as in torch-fidelity): images (:mod:`.images`) go through a :class:`FeatureExtractor`
once (:func:`extract_features`, cached), giving a :class:`FeatureSet` of :class:`FeatureStats`
(float64 mean/covariance, optionally raw features); metrics are pure functions of those:
:func:`frechet_distance` (FID), :func:`inception_score`, :func:`precision_recall`, :func:`kid`,
:func:`mmd2` / :func:`mmd_suite`, :func:`cmmd`. :func:`evaluate` does it all and records, with each
number, the extractor, weights sha256, resize policy and sample counts.

Registered extractors: ``'inception-v3'`` (the FID network, torch-fidelity ``.pth`` weights from
a local file or ``$SKIPTUNE_WEIGHTS``), ``'inception-v3-edm-pkl'`` (EDM's pickle, see
:mod:`.edm_pickle`), ``'clip'`` (optional ``open_clip``), ``'digits-classifier'`` and
``'shapes-classifier'`` (the demo's shipped domain networks, offered through the ``skiptune.extractors``
entry-point group, so this package never imports the demo). Add your own with :func:`register_extractor`,
an entry point of that group, or wrap any module with :func:`wrap_module`.
"""

from __future__ import annotations

from .clip import clip_extractor
from .edm_pickle import UnsafePickleError, load_edm_inception, scan_pickle_globals
from .errors import (
    ChecksumMismatchError,
    FeatureDimMismatchError,
    ImageFormatError,
    MetricsError,
    MissingWeightsError,
    TooFewSamplesError,
)
from .evaluate import METRICS, compute_reference, evaluate, extract_features
from .extractor import (
    FeatureExtractor,
    available_extractors,
    file_sha256,
    get_extractor,
    register_extractor,
    state_dict_sha256,
    unregister_extractor,
    wrap_module,
)
from .featureset import FeatureSet
from .fid import fid_floor, fid_from_features, fid_from_stats, frechet_distance, trace_sqrt_product
from .images import ImageSource, open_images, to_uint8_nchw
from .inception import (
    INCEPTION_FILENAME,
    INCEPTION_SHA256,
    InceptionV3,
    find_inception_weights,
    inception_extractor,
    inception_v3,
    resize_bilinear_tf1,
)
from .inception_score import MeanStd, inception_score
from .mmd import DEFAULT_MMD_KERNELS, Kernel, cmmd, kid, make_kernel, mmd2, mmd_suite
from .precision_recall import PrecisionRecall, precision_recall
from .stats import FeatureStats

for _name, _factory in (
    ("inception-v3", inception_v3),
    ("inception-v3-edm-pkl", load_edm_inception),
    ("clip", clip_extractor),
):
    register_extractor(_name, _factory, overwrite=True)

__all__ = [
    "DEFAULT_MMD_KERNELS",
    "INCEPTION_FILENAME",
    "INCEPTION_SHA256",
    "METRICS",
    "ChecksumMismatchError",
    "FeatureDimMismatchError",
    "FeatureExtractor",
    "FeatureSet",
    "FeatureStats",
    "ImageFormatError",
    "ImageSource",
    "InceptionV3",
    "Kernel",
    "MeanStd",
    "MetricsError",
    "MissingWeightsError",
    "PrecisionRecall",
    "TooFewSamplesError",
    "UnsafePickleError",
    "available_extractors",
    "clip_extractor",
    "cmmd",
    "compute_reference",
    "evaluate",
    "extract_features",
    "fid_floor",
    "fid_from_features",
    "fid_from_stats",
    "file_sha256",
    "find_inception_weights",
    "frechet_distance",
    "get_extractor",
    "inception_extractor",
    "inception_score",
    "inception_v3",
    "kid",
    "load_edm_inception",
    "make_kernel",
    "mmd2",
    "mmd_suite",
    "open_images",
    "precision_recall",
    "register_extractor",
    "resize_bilinear_tf1",
    "scan_pickle_globals",
    "state_dict_sha256",
    "to_uint8_nchw",
    "trace_sqrt_product",
    "unregister_extractor",
    "wrap_module",
]
