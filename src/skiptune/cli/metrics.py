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


def run_ref(args) -> int:
    from skiptune.distributed import extract_features_distributed, init_distributed
    from skiptune.io.outputs import atomic_file, check_output_file
    from skiptune.metrics import compute_reference, get_extractor

    _check_input(args.data, "--data")
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
        fs.save(tmp)
    prov = fs.provenance()
    print(f"wrote {args.out}: n={fs.n}, extractor={prov.get('extractor')}, "
          f"weights_sha256={str(prov.get('weights_sha256'))[:16]}...")
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
    from skiptune.metrics import evaluate

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
        results = evaluate(_images(args.images), None if args.ref is None else _images(args.ref), metrics,
                           extractor=_features(args),
                           extractor_kwargs=_extractor_kwargs(args), batch_size=args.batch,
                           progress=not args.no_progress and d.is_main, kid_subsets=args.kid_subsets,
                           kid_subset_size=args.kid_subset_size,
                           extract=partial(extract_features_distributed, d=d) if d.enabled else None)
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
