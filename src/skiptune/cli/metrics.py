"""``skiptune ref`` and ``skiptune eval``: reference statistics and sample-quality metrics."""

from __future__ import annotations

import json
from pathlib import Path

from skiptune.cli import WEIGHTS_FLAG, UsageError, scoring_features, with_flags
from skiptune.core.errors import SkiptuneError


def _add_extractor_options(p) -> None:
    p.add_argument("--features", default=None, metavar="NAME",
                   help="feature network (registered name): inception-v3, inception-v3-edm-pkl, clip, or a "
                        "registered domain network (default: the one a --ref statistics file records, else "
                        "inception-v3)")
    p.add_argument("--weights", metavar="PATH", default=None,
                   help="weights file of the feature network (default: looked up in $SKIPTUNE_WEIGHTS)")
    p.add_argument("--weights-sha256", metavar="HEX|any", default=None,
                   help="the sha256 the weights file must have, or 'any' to accept other weights (e.g. your own "
                        "Inception-V3; the file's own sha256 is recorded with every number; default: the "
                        "known checksum of the feature network, if it has one)")
    p.add_argument("--trust-code", action="store_true",
                   help="UNSAFE: let --features inception-v3-edm-pkl unpickle a file that would run code (only for "
                        "files you trust)")
    p.add_argument("--batch", type=int, default=64, help="images per feature-extraction batch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


#: library parameter names -> the flags that set them, for messages that reach the user
_FLAGS = {**WEIGHTS_FLAG, "subset_size=": "--kid-subset-size ", "(ref=...)": "(--ref)",
          "ref=...": "--ref", "trust_code=True": "--trust-code", "no option trust_code": "no option --trust-code"}


def _features(args) -> str:
    """``--features``, or the feature network a ``--ref`` statistics file records, or inception-v3."""
    return scoring_features(args.features, getattr(args, "ref", None), default="inception-v3")


def _extractor_kwargs(args) -> dict:
    kwargs = {"weights": args.weights}
    if getattr(args, "trust_code", False):
        kwargs["trust_code"] = True
    sha = getattr(args, "weights_sha256", None)
    if sha is not None:
        text = sha.strip().lower()
        if text != "any" and (len(text) != 64 or any(c not in "0123456789abcdef" for c in text)):
            raise UsageError(f"--weights-sha256 must be 64 hexadecimal digits or 'any', got {sha!r}")
        kwargs["expected_sha256"] = text
    return kwargs


def register(sub) -> None:
    p = sub.add_parser("ref", help="compute reference feature statistics of a data set",
                       description="Extract features of real images once and save mu/sigma (EDM-compatible "
                                   ".npz), optionally with the raw features that KID, P/R and MMD need.")
    p.add_argument("--data", required=True, metavar="DIR|NPZ|DATA",
                   help="image folder (PNG/JPEG), .npz of images, or a built-in data set (digits, shapes: its "
                        "training split)")
    p.add_argument("--out", required=True, metavar="REF.npz")
    p.add_argument("--keep-features", action="store_true", help="also store raw features (for pr, kid, mmd)")
    p.add_argument("--format", choices=("skiptune", "edm"), default="skiptune",
                   help="file layout: skiptune (default: mu, sigma, n, meta and, with --keep-features, the raw "
                        "features) or edm (EDM's fid-refs layout: mu [d] and sigma [d, d] float64, plus the "
                        "provenance as a JSON string 'meta', which EDM's fid.py ignores). Both record the feature "
                        "network, feature, resize policy, image resolution and image count")
    _add_extractor_options(p)
    p.set_defaults(func=run_ref)

    p = sub.add_parser("eval", help="compute FID, IS, precision/recall, KID, MMD of generated images",
                       description="Evaluate images against a reference (images or statistics .npz); prints a "
                                   "table and writes JSON with how every number was made.")
    p.add_argument("--images", required=True, metavar="DIR|NPZ")
    p.add_argument("--ref", metavar="REF.npz|DIR|DATA", default=None,
                   help="reference statistics, images, or a built-in data set (digits, shapes: its training split)")
    p.add_argument("--metrics", default="fid", help="comma list of fid,is,pr,kid,mmd,cmmd,immd (default fid)")
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--json", metavar="OUT.json", default=None, help="write the full results here")
    p.add_argument("--vae", default=None, metavar="DIR",
                   help="--images is a latents.npz (from `skiptune sample` on a latent model): decode it with this "
                        "autoencoder folder (diffusers save_pretrained) first")
    p.add_argument("--vae-scale", type=float, default=None,
                   help="latent scale of --vae (default: the one recorded in latents.npz, else the folder's config)")
    _add_extractor_options(p)
    p.set_defaults(func=run_eval)


BUILTIN_DATA = ("digits", "shapes")


def _check_input(path: str, what: str) -> None:
    if not Path(path).exists() and path not in BUILTIN_DATA:
        raise UsageError(f"{what} {path!r} does not exist (nor is it a built-in data set: {', '.join(BUILTIN_DATA)})")


def _images(spec: str):
    """An image folder or file as it is; a built-in data set name as the uint8 images of its training split."""
    if Path(spec).exists() or spec not in BUILTIN_DATA:
        return spec
    from skiptune.experiment import to_uint8
    from skiptune.train.data import load_dataset

    return to_uint8(load_dataset(spec, split="train").images)


def _decoded(args):
    """The uint8 images of ``--images LATENTS.npz`` decoded by ``--vae`` (the scale recorded with the latents unless
    ``--vae-scale`` says otherwise)."""
    import numpy as np
    import torch

    from skiptune.experiment import to_uint8
    from skiptune.io.vae import check_decoder_fits, load_decoder
    from skiptune.metrics.stats import read_npz

    data = read_npz(args.images, what="latents (.npz from skiptune sample on a latent model)",
                    keys=("latents", "latent_scale_factor"))
    if "latents" not in data:
        raise UsageError(f"--images {args.images}: no 'latents' array (it holds {', '.join(data.files)}); with --vae, "
                         "give the latents.npz that skiptune sample writes for a latent model")
    latents = torch.from_numpy(np.asarray(data["latents"], dtype=np.float32))
    recorded = float(data["latent_scale_factor"]) if "latent_scale_factor" in data else None
    decoder = load_decoder(args.vae, scale=args.vae_scale if args.vae_scale is not None else recorded)
    check_decoder_fits(decoder, latents.shape)
    return to_uint8(decoder.decode(latents, batch_size=args.batch, progress=not args.no_progress))


def _statistics(spec: str):
    """The :class:`~skiptune.metrics.FeatureSet` of a statistics ``.npz`` (errors name the file); None for
    anything else (images, a folder, a data set name)."""
    from skiptune.metrics import FeatureSet
    from skiptune.metrics.stats import read_npz

    path = Path(spec)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return None
    if "mu" not in read_npz(path, what="an .npz of statistics or images", keys=()).files:
        return None
    return FeatureSet.load(path)


def _checked_extract(base, images, ref, ref_spec: str | None):
    """``base`` (the function that extracts features of images) preceded by the checks that need the feature
    network or the images: a statistics file as ``--ref`` is checked against the feature network, the
    resolution of ``--images`` and the network's resize (:func:`~skiptune.experiment.reference.check_reference`),
    before any feature is extracted; reference images must have the resolution of the images scored."""
    from skiptune.core.errors import InputError
    from skiptune.experiment.reference import check_reference
    from skiptune.metrics import FeatureSet
    from skiptune.metrics.images import open_images

    ref_stats = ref if isinstance(ref, FeatureSet) else None
    # the images scored come first; precomputed ones say (if they record it) of which size they were
    seen = {"size": images.image_size if isinstance(images, FeatureSet) else None}

    def extract(x, extractor, **kwargs):
        source = open_images(x)
        if ref_stats is not None:  # x are the images scored
            check_reference(ref_stats, extractor, f"--ref {ref_spec}", resolution=source.image_size,
                            resize=extractor.preprocessing)
            ref_stats.take_as(extractor.feature_for("fid"))
        elif seen["size"] is None:
            seen["size"] = source.image_size
        elif source.image_size != seen["size"]:
            (h, w), (hh, ww) = source.image_size, seen["size"]
            raise InputError(f"--ref {ref_spec} holds {h}x{w} images but the images being scored (--images) are "
                             f"{hh}x{ww}; FID compares images at one resolution: use reference images of {hh}x{ww}")
        return base(source, extractor, **kwargs)

    if ref_stats is not None and isinstance(images, FeatureSet):  # no network runs: compare what both record
        theirs, mine = ref_stats.image_size, images.image_size
        if theirs and mine and theirs != mine:
            raise InputError(f"--ref {ref_spec} holds statistics of {theirs[0]}x{theirs[1]} images but --images "
                             f"holds features of {mine[0]}x{mine[1]} images; FID compares images at one "
                             f"resolution: use a reference of the data at {mine[0]}x{mine[1]}")
        r1, r2 = ref_stats.meta.get("resize"), images.meta.get("resize")
        if r1 and r2 and r1 != r2:
            raise InputError(f"--ref {ref_spec} was computed with the resize policy {r1!r} but the features of "
                             f"--images with {r2!r}; compute both with the same feature network")
        ref_stats.take_as(images.feature_for("fid"))
    return extract


def run_ref(args) -> int:
    from skiptune.distributed import extract_features_distributed, init_distributed
    from skiptune.io.outputs import atomic_file, check_output_file
    from skiptune.metrics import compute_reference, get_extractor

    _check_input(args.data, "--data")
    if args.format == "edm" and args.keep_features:
        raise UsageError("--format edm holds mu and sigma only, not the raw features that --keep-features keeps; "
                         "drop --keep-features, or write --format skiptune (EDM's fid.py reads that too)")
    inputs = {"--data": args.data}
    check_output_file(args.out, "--out", inputs=inputs)  # before any work, on every process
    d = init_distributed("cpu")  # one process unless started by torchrun
    try:
        ext = get_extractor(_features(args), **_extractor_kwargs(args))
        if d.enabled:
            fs = extract_features_distributed(_images(args.data), ext, d, features=[ext.feature_for("fid")],
                                              keep=args.keep_features, batch_size=args.batch,
                                              progress=not args.no_progress)
        else:
            fs = compute_reference(_images(args.data), None, extractor=ext, keep_features=args.keep_features,
                                   batch_size=args.batch, progress=not args.no_progress)
    except SkiptuneError as exc:
        raise with_flags(exc, _FLAGS) from None
    if not d.is_main:
        return 0
    with atomic_file(args.out, "--out", inputs=inputs) as tmp:  # a complete file or the one there before
        if args.format == "skiptune":
            fs.save(tmp)
        else:
            fs.save(tmp, layout=args.format)
    prov, size = fs.provenance(), fs.image_size
    print(f"wrote {args.out} ({args.format} layout): n={fs.n}, "
          f"images={f'{size[0]}x{size[1]}' if size else '?'}, extractor={prov.get('extractor')}, "
          f"feature={fs.primary}, weights_sha256={str(prov.get('weights_sha256'))[:16]}..., "
          f"resize={prov.get('resize')}")
    return 0


def _format(rec: dict) -> str:
    if "value" in rec:
        return f"{rec['value']:.4f}"
    if "mean" in rec:
        return f"{rec['mean']:.4f} +- {rec['std']:.4f}"
    if "precision" in rec:
        return f"P={rec['precision']:.4f} R={rec['recall']:.4f}"
    if "values" in rec:
        return ", ".join(f"{k}={v:.4g}" for k, v in rec["values"].items())
    return "?"


def run_eval(args) -> int:
    from functools import partial

    from skiptune.distributed import extract_features_distributed, init_distributed
    from skiptune.io.outputs import atomic_file, check_output_file
    from skiptune.metrics import evaluate, extract_features

    _check_input(args.images, "--images")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise UsageError("--metrics is empty")
    if args.ref is not None:
        _check_input(args.ref, "--ref")
    inputs = {"--images": args.images, "--ref": args.ref}
    if args.json:
        check_output_file(args.json, "--json", inputs=inputs)  # before any work, on every process
    d = init_distributed("cpu")  # one process unless started by torchrun: then the ranks share the images out
    try:
        images = _decoded(args) if args.vae else _statistics(args.images) or _images(args.images)
        ref = None if args.ref is None else _statistics(args.ref) or _images(args.ref)
        base = partial(extract_features_distributed, d=d) if d.enabled else extract_features
        results = evaluate(images, ref, metrics, extractor=_features(args),
                           extractor_kwargs=_extractor_kwargs(args), batch_size=args.batch,
                           progress=not args.no_progress and d.is_main, kid_subsets=args.kid_subsets,
                           kid_subset_size=args.kid_subset_size,
                           extract=_checked_extract(base, images, ref, args.ref))
    except SkiptuneError as exc:
        raise with_flags(exc, _FLAGS) from None
    if not d.is_main:
        return 0
    print(f"{'metric':<8} {'value':<40} {'n':>7} {'n_ref':>7}  extractor")
    for name, rec in results.items():
        print(f"{name:<8} {_format(rec):<40} {rec.get('n', ''):>7} {rec.get('n_ref', ''):>7}  {rec.get('extractor')}")
    if args.json:
        with atomic_file(args.json, "--json", inputs=inputs) as tmp:  # a complete file or the one there before
            with open(tmp, "w") as f:
                json.dump(results, f, indent=2, default=str)
                f.write("\n")
    return 0
