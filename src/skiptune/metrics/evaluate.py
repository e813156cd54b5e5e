"""From images to numbers: feature extraction (with cache), reference statistics and ``evaluate``.

Every number ``evaluate`` returns comes with the extractor name, weights sha256, resize policy,
the feature used and the sample counts, so it can be reproduced or rejected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from skiptune.core.errors import InputError

from .errors import FeatureDimMismatchError, MetricsError
from .extractor import FeatureExtractor, get_extractor
from .featureset import FeatureSet
from .fid import fid_from_stats
from .images import QUANTIZATION, ImageArray, ImageSource, open_images
from .inception_score import inception_score
from .mmd import DEFAULT_MMD_KERNELS, Kernel, cmmd, kid, mmd_suite
from .precision_recall import precision_recall
from .stats import FeatureStats, read_npz

METRICS = ("fid", "is", "pr", "kid", "mmd", "cmmd", "immd")
#: CMMD is defined on CLIP image embeddings: an extractor whose name starts with this (the registered ``clip``
#: builds ``clip-<model>``)
CLIP_PREFIX = "clip"
NEEDS_RAW_REF = {"pr", "kid", "mmd", "cmmd", "immd"}
DEFAULT_EXTRACTOR = "inception-v3"

Images = str | os.PathLike | ImageArray | ImageSource


def extract_features(
    images: Images,
    extractor: str | FeatureExtractor = DEFAULT_EXTRACTOR,
    *,
    features: Sequence[str] | None = None,
    keep: bool | Sequence[str] = True,
    batch_size: int = 64,
    progress: bool = False,
    value_range: tuple[float, float] | None = None,
    layout: str = "auto",
    cache: str | os.PathLike | None = None,
    extractor_kwargs: Mapping[str, Any] | None = None,
) -> FeatureSet:
    """Run ``extractor`` over all images once; stream statistics of each feature; keep raw features.

    Args:
        images: a folder of PNG/JPEG, an ``.npz``/``.npy`` image array, an array/tensor, or an ImageSource.
        features: feature names to extract (default: all the extractor provides).
        keep: keep raw features (needed by IS, P/R, KID, MMD): ``True``, ``False`` or a list of names.
        progress: show a tqdm progress bar.
        cache: an ``.npz`` path; if it exists and was made by the same extractor (name and weights
            sha256) from the same source with the wanted features, it is loaded instead; otherwise
            the features are computed and written there.
    """
    ext = get_extractor(extractor, **dict(extractor_kwargs or {}))
    source = open_images(images, value_range=value_range, layout=layout)
    wanted = tuple(features) if features is not None else ext.feature_names
    if not wanted:
        raise MetricsError(f"extractor {ext.name!r} declares no features; pass features=[...]")
    kept = set(wanted) if keep is True else set() if keep is False else set(keep)
    if cache is not None and Path(cache).exists():
        cached = FeatureSet.load(cache)
        if _cache_matches(cached, ext, source, wanted, kept):
            return cached
    stats: dict[str, FeatureStats] = {}
    bar = tqdm(total=source.num_images, disable=not progress, desc=f"features [{ext.name}]", unit="img")
    try:
        for batch in source.batches(batch_size):
            out = ext(batch, features=wanted)
            for name in wanted:
                if name not in stats:
                    stats[name] = FeatureStats(out[name].shape[1], keep_features=name in kept)
                stats[name].update(out[name])
            bar.update(batch.shape[0])
    finally:
        bar.close()
    meta = {
        **ext.provenance(),
        "source": source.description,
        "source_fingerprint": source.fingerprint,
        "n": source.num_images,
        "image_size": list(source.image_size),
        "quantization": QUANTIZATION,
        "metric_features": {m: ext.feature_for(m) for m in METRICS},
    }
    for name, st in stats.items():
        st.meta = {**meta, "feature": name}
    primary = ext.feature_for("fid") if ext.feature_for("fid") in wanted else wanted[0]
    result = FeatureSet(stats=stats, meta=meta, primary=primary)
    if cache is not None:
        result.save(cache)
    return result


def _cache_matches(
    cached: FeatureSet, ext: FeatureExtractor, source: ImageSource, wanted: Sequence[str], kept: set[str]
) -> bool:
    m = cached.meta
    if (m.get("extractor"), m.get("weights_sha256"), m.get("source_fingerprint"), m.get("n")) != (
        ext.name,
        ext.weights_sha256,
        source.fingerprint,
        source.num_images,
    ):
        return False
    return all(w in cached.stats for w in wanted) and all(cached.stats[k].features is not None for k in kept)


def compute_reference(
    data: Images,
    out: str | os.PathLike | None = None,
    *,
    extractor: str | FeatureExtractor = DEFAULT_EXTRACTOR,
    keep_features: bool = False,
    batch_size: int = 64,
    progress: bool = False,
    value_range: tuple[float, float] | None = None,
    extractor_kwargs: Mapping[str, Any] | None = None,
) -> FeatureSet:
    """Reference statistics of a data set for the extractor's FID feature; written to ``out`` if given.

    The file holds EDM-compatible ``mu``/``sigma`` plus ``n`` and provenance; with
    ``keep_features=True`` also the raw features, which KID, precision/recall and MMD need.
    """
    ext = get_extractor(extractor, **dict(extractor_kwargs or {}))
    feature = ext.feature_for("fid")
    fs = extract_features(
        data,
        ext,
        features=[feature],
        keep=keep_features,
        batch_size=batch_size,
        progress=progress,
        value_range=value_range,
    )
    if out is not None:
        fs.save(out)
    return fs


def _is_feature_file(x: object) -> bool:
    if not isinstance(x, (str, os.PathLike)) or Path(x).suffix.lower() != ".npz" or not Path(x).is_file():
        return False
    return "mu" in read_npz(x, what="an .npz of statistics or images", keys=()).files


def _as_feature_set(x: object) -> FeatureSet | None:
    if isinstance(x, FeatureSet):
        return x
    if isinstance(x, FeatureStats):
        name = str(x.meta.get("feature") or "features")
        return FeatureSet(stats={name: x}, meta=dict(x.meta), primary=name)
    if _is_feature_file(x):
        return FeatureSet.load(x)
    return None


def evaluate(
    images: Images | FeatureSet,
    ref: Images | FeatureSet | FeatureStats | None = None,
    metrics: Sequence[str] = ("fid",),
    *,
    extractor: str | FeatureExtractor = DEFAULT_EXTRACTOR,
    extractor_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    progress: bool = False,
    value_range: tuple[float, float] | None = None,
    cache: str | os.PathLike | None = None,
    ref_cache: str | os.PathLike | None = None,
    fid_method: str = "sqrtm",
    is_splits: int = 10,
    pr_k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    mmd_kernels: Sequence[Kernel] = DEFAULT_MMD_KERNELS,
    mmd_unbiased: bool = True,
    cmmd_sigma: float = 10.0,
    seed: int = 0,
    extract: Callable[..., FeatureSet] | None = None,
) -> dict[str, dict[str, Any]]:
    """Compute ``metrics`` (from ``fid, is, pr, kid, mmd, cmmd, immd``) of ``images`` against ``ref``.

    ``images``/``ref`` may be images (folder, ``.npz`` images, arrays) -- extracted once with
    ``extractor`` -- or precomputed features (a :class:`FeatureSet`, :class:`FeatureStats` or a
    statistics ``.npz`` such as an EDM reference). ``ref`` is not needed for ``'is'`` alone.

    Returns ``{metric: {values..., 'extractor', 'weights_sha256', 'resize', 'feature', 'n', 'n_ref'}}``:
    ``fid -> value``; ``is -> mean, std``; ``pr -> precision, recall``; ``kid -> mean, std``;
    ``mmd -> values {kernel: MMD^2}``; ``cmmd``/``immd -> value`` (1000 x biased RBF MMD^2, sigma 10).
    ``cmmd`` needs CLIP features (the ``clip`` extractor, or features it made); with any other feature
    network it is refused (it would be that network's ``immd`` under CLIP's name).
    ``extract(images, extractor, features=..., keep=True, batch_size=..., progress=...)`` replaces
    :func:`extract_features` for images (e.g. the torchrun version that shares the images out).
    """
    metrics = [m.lower() for m in metrics]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metrics {unknown}; choose from {METRICS}")
    needs_ref = [m for m in metrics if m != "is"]
    if needs_ref and ref is None:
        raise InputError(f"metrics {needs_ref} need a reference (ref=...)")
    precomputed = _as_feature_set(images)
    if "cmmd" in metrics:  # before any features are extracted
        if precomputed is not None:
            _check_cmmd_features(precomputed.meta.get("extractor"))
        else:
            _check_cmmd_features(extractor.name if isinstance(extractor, FeatureExtractor) else extractor)

    ext_cache: list[FeatureExtractor] = []

    def ext() -> FeatureExtractor:
        if not ext_cache:
            ext_cache.append(get_extractor(extractor, **dict(extractor_kwargs or {})))
        return ext_cache[0]

    def features_of(
        x: object, for_metrics: Sequence[str], cache_path: str | os.PathLike | None
    ) -> FeatureSet:
        pre = _as_feature_set(x)
        if pre is not None:
            return pre
        e = ext()
        wanted = sorted({e.feature_for(m) for m in for_metrics})
        if extract is not None:
            return extract(x, e, features=wanted, keep=True, batch_size=batch_size, progress=progress)
        return extract_features(
            x,
            e,
            features=wanted,
            keep=True,
            batch_size=batch_size,
            progress=progress,
            value_range=value_range,
            cache=cache_path,
        )

    gen = precomputed if precomputed is not None else features_of(images, metrics, cache)
    if "cmmd" in metrics:
        _check_cmmd_features(gen.meta.get("extractor"))
    reference = None
    if needs_ref:
        reference = features_of(ref, needs_ref, ref_cache)
        _check_same_extractor(gen, reference)

    results: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        feature = gen.feature_for(metric)
        rec: dict[str, Any] = {**gen.provenance(), "feature": feature, "n": gen.get(feature).n}
        ref_stats = None
        if metric != "is":
            ref_stats = _ref_feature(reference, feature)
            rec["n_ref"] = ref_stats.n
        if metric == "fid":
            rec["value"] = fid_from_stats(gen.get(feature), ref_stats, method=fid_method)
            rec["method"] = fid_method
        elif metric == "is":
            scores = gen.raw(feature, "IS")
            is_probs = feature == "probs"
            rec["mean"], rec["std"] = (
                inception_score(probs=scores, splits=is_splits)
                if is_probs
                else inception_score(scores, splits=is_splits)
            )
            rec["splits"] = is_splits
        elif metric == "pr":
            p = precision_recall(
                ref_stats.raw("precision/recall"), gen.raw(feature, "precision/recall"), k=pr_k
            )
            rec.update(precision=p.precision, recall=p.recall, k=pr_k)
        elif metric == "kid":
            r = kid(
                gen.raw(feature, "KID"),
                ref_stats.raw("KID"),
                subsets=kid_subsets,
                subset_size=kid_subset_size,
                seed=seed,
            )
            rec.update(mean=r.mean, std=r.std, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
        elif metric == "mmd":
            rec["values"] = mmd_suite(
                gen.raw(feature, "MMD"), ref_stats.raw("MMD"), mmd_kernels, unbiased=mmd_unbiased
            )
            rec["unbiased"] = mmd_unbiased
        else:
            rec["value"] = cmmd(
                gen.raw(feature, metric.upper()), ref_stats.raw(metric.upper()), sigma=cmmd_sigma
            )
            rec.update(sigma=cmmd_sigma, scale=1000.0, estimator="biased")
        results[metric] = rec
    return results


def _check_cmmd_features(extractor: str | None) -> None:
    """CMMD is the MMD of CLIP image embeddings; features of another network (when it is known) are refused."""
    if extractor is None or str(extractor).lower().startswith(CLIP_PREFIX):
        return
    raise InputError(
        f"metric cmmd needs CLIP image embeddings, but the features come from {extractor!r} (on them it would be "
        "immd under CLIP's name): install CLIP with pip install 'skiptune[clip]' and use the clip feature network "
        "with a local checkpoint (command line: --features clip --weights CHECKPOINT; library: extractor='clip', "
        "extractor_kwargs={'weights': CHECKPOINT}), or ask for immd, the same MMD on these features"
    )


def _ref_feature(reference: FeatureSet, feature: str) -> FeatureStats:
    """The reference statistics for ``feature``; a file without provenance (an EDM reference holds only
    ``mu``/``sigma``) provides its single feature under any name (dimensions are still checked)."""
    if feature in reference.stats:
        return reference.stats[feature]
    if len(reference.stats) == 1 and not reference.meta.get("extractor"):
        return next(iter(reference.stats.values()))
    return reference.get(feature)


def _check_same_extractor(a: FeatureSet, b: FeatureSet) -> None:
    x, y = a.meta.get("extractor"), b.meta.get("extractor")
    if x and y and x != y:
        raise FeatureDimMismatchError(
            f"images were measured with extractor {x!r} but the reference with {y!r}; use the same network"
        )
    sx, sy = a.meta.get("weights_sha256"), b.meta.get("weights_sha256")
    if sx and sy and sx != sy:
        raise FeatureDimMismatchError(f"weights differ between images ({sx[:12]}) and reference ({sy[:12]})")
