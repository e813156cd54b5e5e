"""Cross-check skiptune.metrics against torch-fidelity and clean-fid on the same random inputs.

Optional dependencies (never test dependencies): ``pip install torch-fidelity clean-fid`` (both import
torchvision at package import time, although the functions compared here never use it). Prints one
table row per comparison with the relative difference ``|ours - theirs| / max(|theirs|, 1e-300)``;
the goal is 1e-6 for the distance functions.

    python benchmarks/metrics_crosscheck.py [--dim 256] [--n 1000] [--seed 0] [--stub-torchvision]

``--stub-torchvision`` lets both packages import where torchvision is absent or broken (e.g. a CUDA
build of torchvision next to a CPU torch) by registering empty placeholder ``torchvision`` modules:
only module-level imports are satisfied; nothing from torchvision runs in the compared functions.
It is off by default and announced in the output when used.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

try:
    import skiptune.metrics as sm
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import skiptune.metrics as sm


class _PlaceholderModule(types.ModuleType):
    """A module whose missing attributes are placeholder classes (capitalised) or submodules."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name[0].isupper():
            cls = type(name, (), {"__init__": lambda self, *a, **k: None})
            setattr(self, name, cls)
            return cls
        full = f"{self.__name__}.{name}"
        mod = sys.modules.get(full) or _make_placeholder(full)
        setattr(self, name, mod)
        return mod


def _make_placeholder(name: str) -> types.ModuleType:
    mod = _PlaceholderModule(name)
    mod.__path__ = []  # a package, so submodules import
    mod.__version__ = "0.0.0+placeholder"
    sys.modules[name] = mod
    return mod


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _make_placeholder(spec.name)

    def exec_module(self, module):
        return None


def _import_references(stub: bool) -> tuple[dict[str, types.ModuleType], list[str]]:
    if stub:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _PlaceholderFinder())
    mods: dict[str, types.ModuleType] = {}
    problems: list[str] = []
    for key, names in {
        "tf_fid": "torch_fidelity.metric_fid",
        "tf_kid": "torch_fidelity.metric_kid",
        "tf_isc": "torch_fidelity.metric_isc",
        "tf_prc": "torch_fidelity.metric_prc",
        "tf_interp": "torch_fidelity.interpolate_compat_tensorflow",
        "tf_incep": "torch_fidelity.feature_extractor_inceptionv3",
        "cf_fid": "cleanfid.fid",
    }.items():
        try:
            mods[key] = importlib.import_module(names)
        except Exception as e:  # ImportError, or RuntimeError from a broken torchvision build
            problems.append(f"{names}: {type(e).__name__}: {str(e).splitlines()[0][:150]}")
    return mods, problems


def _rel(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / max(abs(theirs), 1e-300)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=256, help="feature dimension (2048 = Inception pool3)")
    ap.add_argument("--n", type=int, default=1000, help="samples per set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--stub-torchvision", action="store_true", help="placeholder torchvision modules (see doc)"
    )
    ap.add_argument("--skip-network", action="store_true", help="skip the full-size Inception comparison")
    args = ap.parse_args()

    mods, problems = _import_references(args.stub_torchvision)
    if args.stub_torchvision:
        print("NOTE: torchvision replaced by empty placeholder modules (--stub-torchvision).")
    if problems:
        print("Not importable:")
        for p in problems:
            print("  -", p)
    if not mods:
        print(
            "\nNothing to compare. Install the references in a separate environment, e.g.\n"
            "  python -m venv /tmp/xcheck\n"
            "  /tmp/xcheck/bin/pip install torch torchvision torch-fidelity clean-fid\n"
            "(both import torchvision; a CPU torch needs the matching CPU torchvision build), or try\n"
            "  pip install --no-deps torch-fidelity clean-fid  and run with --stub-torchvision."
        )
        return

    rng = np.random.default_rng(args.seed)
    d, n = args.dim, args.n
    a_mix = rng.standard_normal((d, d)) / math.sqrt(d)
    x = (np.abs(rng.standard_normal((n, d))) @ a_mix + 0.3).astype(np.float32)  # non-negative-ish, correlated
    y = (np.abs(rng.standard_normal((n, d))) @ (a_mix * 1.1) + 0.25).astype(np.float32)
    sx, sy = sm.FeatureStats.from_features(x), sm.FeatureStats.from_features(y)
    rows: list[tuple[str, str, float, float, float]] = []

    def add(name: str, ref: str, ours: float, theirs: float) -> None:
        rows.append((name, ref, float(ours), float(theirs), _rel(float(ours), float(theirs))))

    t0 = time.time()
    if "tf_fid" in mods:
        # their statistics of float64 features (np.mean/np.cov); ours accumulate float64 sums
        st = mods["tf_fid"].fid_features_to_statistics(torch.from_numpy(x.astype(np.float64)))
        rel_mu = float(np.abs(st["mu"] - sx.mean).max() / np.abs(st["mu"]).max())
        rel_cov = float(np.abs(st["sigma"] - sx.cov).max() / np.abs(st["sigma"]).max())
        rows.append(("mean (max rel)", "torch-fidelity np.mean", 0.0, 0.0, rel_mu))
        rows.append(("covariance (max rel)", "torch-fidelity np.cov", 0.0, 0.0, rel_cov))
        theirs = mods["tf_fid"].fid_statistics_to_metric(
            {"mu": sx.mean, "sigma": sx.cov}, {"mu": sy.mean, "sigma": sy.cov}, False
        )["frechet_inception_distance"]
        add("FID sqrtm", "torch-fidelity", sm.frechet_distance(sx.mean, sx.cov, sy.mean, sy.cov), theirs)
        add(
            "FID eigh",
            "torch-fidelity",
            sm.frechet_distance(sx.mean, sx.cov, sy.mean, sy.cov, method="eigh"),
            theirs,
        )
    if "cf_fid" in mods:
        theirs = mods["cf_fid"].frechet_distance(sx.mean, sx.cov, sy.mean, sy.cov)
        add("FID sqrtm", "clean-fid", sm.frechet_distance(sx.mean, sx.cov, sy.mean, sy.cov), theirs)
        kd = mods["cf_fid"].kernel_distance(
            x.astype(np.float64), y.astype(np.float64), num_subsets=1, max_subset_size=n
        )
        add("KID (1 subset = all)", "clean-fid", sm.kid(y, x, subsets=1, subset_size=n).mean, kd)
    if "tf_kid" in mods:
        kw = dict(
            kid_subsets=1,
            kid_subset_size=n,
            verbose=False,
            rng_seed=0,
            kid_kernel="poly",
            kid_kernel_poly_degree=3,
            kid_kernel_poly_gamma=None,
            kid_kernel_poly_coef0=1,
        )
        # float64 inputs: their KID otherwise computes kernels in float32 (~1e-5 relative off)
        theirs = mods["tf_kid"].kid_features_to_metric(
            torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y.astype(np.float64)), **kw
        )
        add(
            "KID (1 subset = all)",
            "torch-fidelity",
            sm.kid(x, y, subsets=1, subset_size=n).mean,
            theirs["kernel_inception_distance_mean"],
        )
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        for kname, kfun, ours_kernel in (
            ("poly", mods["tf_kid"].kernel_poly, sm.Kernel("polynomial")),
            ("rbf s=10", mods["tf_kid"].kernel_rbf, sm.Kernel("rbf", sigma=10.0)),
        ):
            kk = dict(
                kid_kernel_poly_degree=3,
                kid_kernel_poly_gamma=None,
                kid_kernel_poly_coef0=1,
                kid_kernel_rbf_sigma=10.0,
            )
            kxx, kyy, kxy = kfun(x64, x64, **kk), kfun(y64, y64, **kk), kfun(x64, y64, **kk)
            for est, unbiased in (("unbiased", True), ("biased", False)):
                theirs = mods["tf_kid"].mmd2(kxx, kxy, kyy, mmd_est=est)
                add(
                    f"MMD^2 {kname} {est}",
                    "torch-fidelity",
                    sm.mmd2(x, y, ours_kernel, unbiased=unbiased),
                    theirs,
                )
    if "tf_isc" in mods:
        logits = torch.from_numpy(rng.standard_normal((n, 100)).astype(np.float32) * 3)
        theirs = mods["tf_isc"].isc_features_to_metric(logits, splits=10, shuffle=False)
        ours = sm.inception_score(logits.numpy(), splits=10)
        add("IS mean", "torch-fidelity", ours.mean, theirs["inception_score_mean"])
        add("IS std", "torch-fidelity", ours.std, theirs["inception_score_std"])
    if "tf_prc" in mods:
        gx, gy = torch.from_numpy(x[: n // 2]), torch.from_numpy(y[: n // 2])
        p, r = mods["tf_prc"].calculate_precision_recall_full(gy, gx, 3, 10000)  # (generated, real)
        ours = sm.precision_recall(gx.numpy(), gy.numpy(), k=3)
        add("precision", "torch-fidelity", ours.precision, p)
        add("recall", "torch-fidelity", ours.recall, r)
    if "tf_interp" in mods:
        img = torch.from_numpy(rng.integers(0, 256, (2, 3, 32, 32)).astype(np.float32))
        theirs = mods["tf_interp"].interpolate_bilinear_2d_like_tensorflow1x(
            img, size=(299, 299), align_corners=False
        )
        diff = float((sm.resize_bilinear_tf1(img, (299, 299)) - theirs).abs().max())
        rows.append(("TF1 resize 32->299 (max |diff|)", "torch-fidelity", 0.0, 0.0, diff / 255.0))
    if "tf_incep" in mods and not args.skip_network:
        rows.extend(_compare_networks(mods["tf_incep"], rng))

    print(f"\nskiptune.metrics cross-check: d={d}, n={n}, seed={args.seed}  ({time.time() - t0:.1f} s)\n")
    print(f"{'quantity':34s} {'reference':24s} {'ours':>16s} {'theirs':>16s} {'rel. diff':>10s}  ok(1e-6)")
    for name, ref, ours, theirs, rel in rows:
        shown = (f"{ours:16.9g} {theirs:16.9g}") if (ours or theirs) else f"{'':16s} {'':16s}"
        print(f"{name:34s} {ref:24s} {shown} {rel:10.2e}  {'yes' if rel <= 1e-6 else 'NO'}")


def _compare_networks(tf_incep: types.ModuleType, rng: np.random.Generator) -> list[tuple]:
    """Our Inception vs torch-fidelity's FeatureExtractorInceptionV3 with the same random weights."""
    import tempfile

    torch.manual_seed(0)
    ours = sm.InceptionV3().eval()
    with torch.no_grad():  # He-normal convs keep activations O(1) through 94 layers
        for name, p in ours.named_parameters():
            if name.endswith("conv.weight"):
                p.normal_(0, math.sqrt(2 / p[0].numel()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random-inception.pth"
        torch.save({k: v for k, v in ours.state_dict().items() if "num_batches" not in k}, path)
        theirs = tf_incep.FeatureExtractorInceptionV3(
            "inception-v3-compat",
            ["2048", "logits_unbiased", "logits"],
            feature_extractor_weights_path=str(path),
        )
    x = torch.from_numpy(rng.integers(0, 256, (3, 3, 64, 64)).astype(np.uint8))
    with torch.no_grad():
        mine = ours(x, features=("pool", "logits_unbiased", "logits"))
        t_pool, t_unb, t_log = theirs(x)
    out = []
    for label, a, b in (
        ("pool", mine["pool"], t_pool),
        ("logits_unbiased", mine["logits_unbiased"], t_unb),
        ("logits", mine["logits"], t_log),
    ):
        rel = float((a - b).abs().max() / b.abs().max())
        out.append((f"Inception {label} (max rel)", "torch-fidelity", 0.0, 0.0, rel))
    return out


if __name__ == "__main__":
    main()
