"""ODE-invert real images to noise with and without tuning; MMD to fresh N(0, I) under several kernels (Table 13).

Seed 003, Sec. 5.4: simulating the probability-flow ODE from time 0 to T maps data to
(approximately) Gaussian noise. Real images are inverted with the untouched and the tuned network
(the tuning is active during the inversion, as in the forward sampling), and the MMD between the
inverted noise and fresh N(0, I) draws is reported under several kernels, each normalised to the
untouched network (baseline = 1); the paper inverts 10k images in 9 steps, rho = 0.7, and finds
relative MMDs of 0.96..1.01.

Inversion. The ODE dx/dsigma = (x - D(x, sigma)) / sigma is integrated upwards from x(sigma_min) =
image (the O(sigma_min) noise neglected) to sigma_max on the increasing grid that retraces the
sampler's grid (:func:`skiptune.sampling.inversion_sigmas`), with a deterministic solver; the latent
is z = x(sigma_max) / sigma_max, which for the exact flow is distributed as p_{sigma_max} / sigma_max,
i.e. N(0, I) up to O(data scale / sigma_max).

MMD (seed 003 App. B, eq. 5-6). For kernels k, MMD^2(P, Q) = E k(X, X') - 2 E k(X, Y) + E k(Y, Y');
the unbiased estimator (eq. 6) drops the i = j terms of the within-sample sums. Kernels: Gaussian
RBF exp(-||a - b||^2 / (2 s^2)) with s = c * (median pairwise L2 distance) for each scale c,
Laplacian exp(-||a - b||_1 / s) with s = median L1 distance, cubic polynomial (a.b/d + 1)^3 and
linear a.b. The medians are taken on the fresh N(0, I) draws alone, so both networks are measured
with the same kernels (for N(0, I_d), the median L2 distance is about sqrt(2d)).

Units. The images are split into ``seed_sets`` disjoint chunks of n (n = size of a seed set); chunk
k is compared with the n fresh draws of seed set k. Each (rule, chunk) is one cached unit in the
results store. Reported per kernel: the mean MMD^2 over chunks with its t interval, the relative
value mean(rule) / mean(untouched) (the paper's normalisation) and the paired difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from skiptune.analysis.base import AnalysisResult, cached
from skiptune.analysis.scoring import canonical_rules, estimate_columns
from skiptune.core.checksums import state_dict_sha256, tensor_sha256
from skiptune.core.errors import InputError
from skiptune.core.stats import paired_difference, t_interval
from skiptune.experiment.generate import SamplingSpec
from skiptune.metrics.mmd import Kernel, mmd2
from skiptune.runs.sweep import seed_sets
from skiptune.sampling import (
    DETERMINISTIC,
    EDMDenoiser,
    SeedNoise,
    inversion_sigmas,
    invert,
    make_sigmas,
    sampler_fields,
)
from skiptune.skip import Identity, as_rule, skip_tuning
from skiptune.store import Store

NAME = "inversion"
HELP = "ODE-invert real images with and without tuning, MMD of the noise to N(0, I) under several kernels (Table 13)"


def inversion_grid(net: nn.Module | None, steps: int, grid: str = "edm", sigma_range: tuple[float, float] | None = None,
                   ) -> torch.Tensor:
    """Increasing grid sigma_min = s_0 < ... < s_steps = sigma_max: the sampler's grid of ``steps + 1``
    positive sigmas, reversed (``steps`` integration intervals)."""
    if int(steps) != steps or steps < 1:
        raise InputError(f"inversion steps must be an integer >= 1, got {steps}")
    lo, hi = sigma_range or SamplingSpec("heun", steps=steps, grid=grid).sigma_range(net)
    return inversion_sigmas(make_sigmas(grid, steps + 1, lo, hi))


@torch.no_grad()
def invert_to_noise(denoiser, images: torch.Tensor, sigmas: torch.Tensor, *, sampler: str = "heun",
                    labels: torch.Tensor | None = None, batch: int = 250) -> torch.Tensor:
    """Latents z = x(sigma_max) / sigma_max of ``images`` (float64, flattened to [N, d]).

    ``labels`` (one-hot [N, label_dim]) go to the denoiser as ``class_labels``.
    """
    if batch < 1:
        raise InputError("batch must be >= 1")
    out = []
    for i in range(0, images.shape[0], batch):
        x = images[i:i + batch].to(torch.float64)
        extra = {"class_labels": labels[i:i + batch]} if labels is not None else {}
        out.append(invert(denoiser, x, sigmas, sampler=sampler, extra_args=extra).reshape(x.shape[0], -1))
    return torch.cat(out) / float(sigmas[-1])


def noise_kernels(reference: torch.Tensor, rbf_scales: Sequence[float] = (0.5, 1.0, 2.0)) -> dict[str, Kernel]:
    """``{label: Kernel}``: RBF at ``scale x`` the median L2 distance, Laplacian at the median L1
    distance (both medians of ``reference``), cubic polynomial (gamma = 1/d, coef0 = 1) and linear."""
    ref = torch.as_tensor(reference, dtype=torch.float64)
    if ref.ndim != 2 or ref.shape[0] < 2:
        raise InputError("the reference draws must be a [n >= 2, d] matrix")
    empty = ref[:0]
    l2 = float(Kernel("rbf", sigma="median").resolve(empty, ref).sigma)
    l1 = float(Kernel("laplacian", sigma="median").resolve(empty, ref).sigma)
    out = {}
    for c in rbf_scales:
        if not (math.isfinite(c) and c > 0):
            raise InputError(f"RBF bandwidth scales must be > 0, got {c}")
        out[f"rbf {c:g}x median"] = Kernel("rbf", sigma=c * l2)
    out["laplacian median"] = Kernel("laplacian", sigma=l1)
    out["polynomial 3"] = Kernel("polynomial", degree=3, coef0=1.0)
    out["linear"] = Kernel("linear")
    return out


def noise_mmd(z: torch.Tensor, reference: torch.Tensor, kernels: dict[str, Kernel], *, unbiased: bool = True,
              ) -> dict[str, float]:
    """MMD^2 (eq. 6 if ``unbiased``, else the biased V-statistic) between ``z`` and ``reference`` per kernel."""
    a = np.asarray(z, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    return {name: float(mmd2(a, b, k, unbiased=unbiased)) for name, k in kernels.items()}


def _one_hot(labels: torch.Tensor | None, label_dim: int, n: int) -> torch.Tensor | None:
    if not label_dim:
        return None
    if labels is None:
        raise InputError(f"the network is class-conditional ({label_dim} classes) but the images have no labels; "
                         "inversion needs each image's class")
    labels = labels[:n].long()
    if int(labels.min()) < 0 or int(labels.max()) >= label_dim:
        raise InputError(f"image labels must lie in 0..{label_dim - 1} for this network")
    return torch.eye(label_dim, dtype=torch.float64)[labels]


def run_inversion(net: nn.Module, images: torch.Tensor, *, labels: torch.Tensor | None = None,
                  rules: Sequence[str] = ("none", "layer:0.7", "const:0.7"), sampler: str = "heun", steps: int = 9,
                  grid: str = "edm", seeds: str = "0-99", seed_sets_count: int = 3,
                  rbf_scales: Sequence[float] = (0.5, 1.0, 2.0), unbiased: bool = True, mode: str = "concat",
                  batch: int = 250, device: str = "cpu", data_id: str = "", store: Store | None = None,
                  progress: bool = False) -> AnalysisResult:
    """Relative MMD^2 between inverted real images and fresh N(0, I) draws per kernel (Table 13).

    ``images`` ([N, C, H, W] in [-1, 1]): the first n * ``seed_sets_count`` are used, in chunks of n,
    n the size of the seed set ``seeds``; chunk k is compared with the standard normal draws of the
    k-th seed set (``seeds``, then shifted copies).
    """
    if sampler not in DETERMINISTIC:
        raise InputError(f"inversion needs a deterministic sampler, one of {sorted(DETERMINISTIC)}; got {sampler!r}")
    rules = canonical_rules(rules)
    if "none" not in rules:
        rules = ["none", *rules]
    sets = seed_sets(seeds, seed_sets_count)
    n = len(SeedNoise(sets[0]).seeds)
    if images.ndim != 4:
        raise InputError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[0] < n * len(sets):
        raise InputError(f"inversion needs {len(sets)} chunks of {n} images = {n * len(sets)}, but only "
                         f"{images.shape[0]} are available; use fewer seeds per set or fewer seed sets")
    shape = tuple(images.shape[1:])
    expected = (getattr(net, "img_channels", shape[0]), getattr(net, "img_resolution", shape[1]),
                getattr(net, "img_resolution", shape[2]))
    if shape != expected:
        raise InputError(f"images are {shape} but the network expects {expected}")
    net = net.to(device).eval()
    srange = SamplingSpec(sampler, steps=steps, grid=grid).sigma_range(net)
    sig = inversion_grid(net, steps, grid, srange)
    onehot = _one_hot(labels, int(getattr(net, "label_dim", 0) or 0), images.shape[0])
    model_id = state_dict_sha256(net)
    d = int(np.prod(shape))
    per: dict[tuple[str, int], dict] = {}
    kernel_names: list[str] = []
    units = [(r, k) for r in rules for k in range(len(sets))]
    bar = tqdm(units, desc="inversion", unit="chunk", disable=not progress)
    for rule, k in bar:
        chunk = images[k * n:(k + 1) * n]
        labels_k = onehot[k * n:(k + 1) * n].to(device) if onehot is not None else None
        ref = SeedNoise(sets[k], dtype=torch.float64).randn([d])
        kernels = noise_kernels(ref, rbf_scales)
        kernel_names = list(kernels)
        config = {"model": model_id, "rule": rule, "mode": mode, **sampler_fields(sampler),
                  "steps": steps, "grid": grid, "sigma_range": list(srange), "images": tensor_sha256(chunk),
                  "data": data_id, "noise_seeds": sets[k],
                  "kernels": {name: kern.describe() for name, kern in kernels.items()}, "unbiased": unbiased}
        bar.set_postfix_str(f"{rule} chunk {k}")

        def compute(rule=rule, chunk=chunk, labels_k=labels_k, ref=ref, kernels=kernels):
            r = as_rule(rule)
            tuning = nullcontext() if isinstance(r, Identity) else skip_tuning(net, r, mode=mode, sigma_range=srange)
            with tuning:
                z = invert_to_noise(EDMDenoiser(net), chunk.to(device), sig.to(device), sampler=sampler,
                                    labels=labels_k, batch=batch).cpu()
            return {"mmd2": noise_mmd(z, ref, kernels, unbiased=unbiased),
                    "bandwidth": {name: kern.sigma for name, kern in kernels.items() if kern.sigma is not None},
                    "latent_mean": float(z.mean()), "latent_std": float(z.std())}

        per[(rule, k)] = cached(store, "inversion", config, compute)
    rows = []
    ks = range(len(sets))
    summary: dict = {}
    for kern in kernel_names:
        base_vals = [per[("none", k)]["mmd2"][kern] for k in ks]
        base = t_interval(base_vals)
        for rule in rules:
            vals = [per[(rule, k)]["mmd2"][kern] for k in ks]
            e = t_interval(vals)
            diff = paired_difference(e, base)
            rel = e.mean / base.mean if base.mean > 0 else math.nan
            rows.append({"kernel": kern, "rule": rule, **estimate_columns(e, "mmd2"), "relative": rel,
                         **estimate_columns(diff, "diff")})
    for rule in rules:
        summary[f"latent_std[{rule}]"] = float(np.mean([per[(rule, k)]["latent_std"] for k in ks]))
        summary[f"latent_mean[{rule}]"] = float(np.mean([per[(rule, k)]["latent_mean"] for k in ks]))
        if rule != "none":
            rel = [r["relative"] for r in rows if r["rule"] == rule]
            summary[f"kernels_below_1[{rule}]"] = f"{sum(v < 1 for v in rel)}/{len(rel)}"
    config = {"model": model_id, "data": data_id, "rules": rules, **sampler_fields(sampler),
              "steps": steps, "grid": grid,
              "sigma_range": list(srange), "mode": mode, "noise_seed_sets": sets, "n_per_set": n,
              "kernels": kernel_names, "unbiased": unbiased}
    nfe = 2 * steps if sampler == "heun" else steps
    notes = [
        f"{len(sets)} chunks of {n} real images ({data_id or 'given images'}), each inverted with {sampler} over "
        f"{steps} steps (about {nfe} NFE) from sigma {float(sig[0]):g} to {float(sig[-1]):g}, latent / sigma_max "
        f"compared with {n} fresh N(0, I) draws of seed set k ({', '.join(sets)}); seed 003 Table 13: 10k vs 10k, "
        "9 steps, rho 0.7.",
        f"{'Unbiased MMD^2 (seed 003 eq. 6)' if unbiased else 'Biased MMD^2 (V-statistic)'}; kernel bandwidths from "
        "the fresh draws (the same kernels for every rule); relative = mean MMD^2(rule) / mean MMD^2(untouched); "
        "diff = paired difference over chunks with a 95% t interval.",
    ]
    if any(math.isnan(r["relative"]) for r in rows):
        notes.append("relative is NaN where the untouched network's mean MMD^2 is <= 0 (the unbiased estimate of a "
                     "discrepancy too small for this sample size).")
    return AnalysisResult(NAME, config, rows, summary, notes)
