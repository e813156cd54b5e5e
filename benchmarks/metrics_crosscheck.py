"""Cross-check skiptune.metrics against torch-fidelity and clean-fid on the same random inputs.

Optional dependencies (never test dependencies): ``pip install torch-fidelity clean-fid`` (both import
torchvision at package import time, although the functions compared here never use it). Prints one
table row per comparison with the relative difference ``|ours - theirs| / max(|theirs|, 1e-300)``;
the goal is 1e-6 for the distance functions.

    python benchmarks/metrics_crosscheck.py [--dim 256] [--n 1000] [--seed 0] [--stub-torchvision]
        [--net-images 32] [--net-size 64] [--net-dtype float32|float64|both] [--skip-network]

The Inception comparison gives our ``InceptionV3`` and torch-fidelity's ``FeatureExtractorInceptionV3`` the
same random weights (every convolution, BatchNorm statistic and the fc layer), feeds both the same uint8
``--net-size`` images (so both take their resize path to 299x299) and reports the largest absolute and
relative differences of the 2048-d pool features and the logits, and the FID between two image sets computed
from each network's features. Without torch-fidelity it is skipped with a message.

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
    ap.add_argument("--net-images", type=int, default=32, help="images per set for the Inception comparison")
    ap.add_argument("--net-size", type=int, default=64, help="side of the uint8 images (resized to 299 by both)")
    ap.add_argument("--net-dtype", choices=("float32", "float64", "both"), default="both",
                    help="internal dtype of both Inception networks")
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
            "  pip install --no-deps torch-fidelity clean-fid  and run with --stub-torchvision.\n"
            "The Inception network comparison (ours vs torch-fidelity's, same random weights) is skipped too."
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
    if not args.skip_network:
        dtypes = ["float32", "float64"] if args.net_dtype == "both" else [args.net_dtype]
        rows.extend(_compare_networks(mods.get("tf_incep"), mods.get("tf_fid"), mods.get("tf_interp"), rng,
                                      args.net_images, args.net_size, dtypes))

    print(f"\nskiptune.metrics cross-check: d={d}, n={n}, seed={args.seed}  ({time.time() - t0:.1f} s)\n")
    width = max([34, *(len(r[0]) for r in rows)])
    print(f"{'quantity':{width}s} {'reference':24s} {'ours':>16s} {'theirs':>16s} {'rel. diff':>10s}  ok(1e-6)")
    for name, ref, ours, theirs, rel in rows:
        shown = (f"{ours:16.9g} {theirs:16.9g}") if (ours or theirs) else f"{'':16s} {'':16s}"
        verdict = "yes" if rel <= 1e-6 else "(abs)" if "max|diff|" in name else "NO"
        print(f"{name:{width}s} {ref:24s} {shown} {rel:10.2e}  {verdict}")


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights for every parameter and buffer the forward uses: He-normal convs (activations stay O(1)
    through 94 layers), BatchNorm statistics and affine parameters near identity, a small fc."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("conv.weight"):
                t.copy_(torch.randn(t.shape, generator=gen) * math.sqrt(2 / t[0].numel()))
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith(("running_mean", "bn.bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif name.endswith("bn.weight"):
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=gen))
            elif name == "fc.weight":
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(t.shape[1]))
            elif name == "fc.bias":
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
    return net.eval()


def _smooth_images(rng: np.random.Generator, n: int, size: int, offset: float) -> torch.Tensor:
    """uint8 NCHW images with structure at several scales (upsampled noise), so that the resize matters."""
    out = np.zeros((n, 3, size, size))
    for cells, weight in ((4, 80.0), (16, 40.0), (size, 20.0)):
        coarse = torch.from_numpy(rng.standard_normal((n, 3, cells, cells)))
        out += weight * torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").numpy()
    return torch.from_numpy(np.clip(out + 128 + offset, 0, 255).round().astype(np.uint8))


def _compare_networks(tf_incep: types.ModuleType | None, tf_fid: types.ModuleType | None,
                      tf_interp: types.ModuleType | None, rng: np.random.Generator, n_images: int, size: int,
                      dtypes: list[str]) -> list[tuple]:
    """Our Inception vs torch-fidelity's FeatureExtractorInceptionV3 with the same random weights, on the same
    uint8 ``size`` x ``size`` images (so both resize them to 299x299 their own way), for two sets of
    ``n_images``: max |difference| and max relative difference of the pool (2048-d) features and logits, and the
    FID between the two sets from each network's features.

    In float32 (the FID standard) both resize alike. In float64 torch-fidelity computes the resize's source
    coordinates in float64 while ours keeps TensorFlow 1.x's float32 coordinates (at any dtype), which moves
    resized pixels by up to ~1e-3 of 255 and the features by a few 1e-7 relative; the resize row shows it."""
    if tf_incep is None:
        print("\nInception network comparison skipped: torch_fidelity.feature_extractor_inceptionv3 is not "
              "importable (see 'Not importable' above); install torch-fidelity in a separate environment "
              "(pip install --no-deps torch-fidelity, then run with --stub-torchvision if torchvision is absent).")
        return []
    import tempfile

    ours32 = _randomize(sm.InceptionV3())
    a = _smooth_images(rng, n_images, size, 0.0)
    b = _smooth_images(rng, n_images, size, 12.0)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random-inception.pth"
        torch.save({k: v for k, v in ours32.state_dict().items() if "num_batches" not in k}, path)
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            ours = ours32.to(dtype)
            theirs = tf_incep.FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased", "logits"],
                feature_extractor_weights_path=str(path), feature_extractor_internal_dtype=dtype_name,
            ).eval()
            t0 = time.time()
            feats: dict[str, dict[str, list[torch.Tensor]]] = {"ours": {}, "theirs": {}}
            with torch.no_grad():
                for images in (a, b):
                    for i in range(0, len(images), 8):
                        x = images[i : i + 8]
                        mine = ours(x, features=("pool", "logits_unbiased", "logits"))
                        t_pool, t_unb, t_log = theirs(x)
                        for who, values in (("ours", (mine["pool"], mine["logits_unbiased"], mine["logits"])),
                                            ("theirs", (t_pool, t_unb, t_log))):
                            for key, v in zip(("pool", "logits_unbiased", "logits"), values, strict=True):
                                # torch-fidelity returns float32 whatever its internal dtype: round ours alike
                                feats[who].setdefault(key, []).append(v.to(torch.float32).to(torch.float64))
            seconds = time.time() - t0
            tag = f"{dtype_name}, {n_images}+{n_images} x {size}x{size}->299"
            if tf_interp is not None:
                x = a[:4].to(dtype)
                theirs_resized = tf_interp.interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299),
                                                                                     align_corners=False)
                diff = float((sm.resize_bilinear_tf1(x, (299, 299)) - theirs_resized).abs().max())
                out.append((f"TF1 resize max|diff|/255 ({tag})", "torch-fidelity", 0.0, 0.0, diff / 255.0))
            for key in ("pool", "logits_unbiased", "logits"):
                mine, their = torch.cat(feats["ours"][key]), torch.cat(feats["theirs"][key])
                diff = float((mine - their).abs().max())
                out.append((f"Inception {key} max|diff| ({tag})", "torch-fidelity", 0.0, 0.0, diff))
                rel = diff / float(their.abs().max())
                out.append((f"Inception {key} max rel ({tag})", "torch-fidelity", 0.0, 0.0, rel))
            pools = {who: torch.cat(feats[who]["pool"]).numpy() for who in feats}
            ours_fid = sm.frechet_distance(*_moments(pools["ours"][:n_images]), *_moments(pools["ours"][n_images:]))
            same_fn = sm.frechet_distance(*_moments(pools["theirs"][:n_images]),
                                          *_moments(pools["theirs"][n_images:]))
            out.append((f"FID A vs B, our fn ({tag})", "their features", ours_fid, same_fn, _rel(ours_fid, same_fn)))
            if tf_fid is not None:
                st = [tf_fid.fid_features_to_statistics(torch.from_numpy(pools["theirs"][s]))
                      for s in (slice(0, n_images), slice(n_images, None))]
                their_fid = tf_fid.fid_statistics_to_metric(st[0], st[1], False)["frechet_inception_distance"]
                out.append((f"FID A vs B ({tag})", "torch-fidelity fid", ours_fid, their_fid,
                            _rel(ours_fid, their_fid)))
            print(f"  [{dtype_name}] both networks on {2 * n_images} images: {seconds:.1f} s")
    if n_images <= 2048:
        print(f"  note: {n_images} images per set < 2048 dimensions: the covariances are singular, so the FID rows "
              "compare a biased number (identical inputs to both sides; they test agreement, not quality)")
    return out


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    st = sm.FeatureStats.from_features(x)
    return st.mean, st.cov


if __name__ == "__main__":
    main()
