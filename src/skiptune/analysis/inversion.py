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

The paper's quantity (seed 003, Sec. 5.4, Table 13: "relative MMD distance"; "for each kernel, we
normalize the baseline result to 1"; "the experiments are conducted several times and the average of
results are reported"). App. B calls MMD^2 of eq. 5 "the MMD distance", while a distance in the usual
sense is MMD = sqrt(MMD^2); the two ratios differ (sqrt(r) against r), so both are reported:

- ``relative_mmd`` = mean_k MMD_k(rule) / mean_k MMD_k(untouched), MMD_k = sqrt(max(MMD^2_k, 0)) of chunk k
  (the unbiased MMD^2 of eq. 6 can be slightly negative when the discrepancy is below its noise);
- ``relative_mmd2`` = mean_k MMD^2_k(rule) / mean_k MMD^2_k(untouched).

Scale and shape. A latent set whose only defect is its scale (per-coordinate std c instead of 1) is far
from N(0, I) under every kernel, so a ratio can be dominated by the latents' overall scale. Each table
is therefore given twice (column ``latents``): ``raw`` (z itself) and ``standardised`` (every latent set,
the inverted z and the fresh draws alike, shifted and scaled by one scalar each to mean 0 and variance 1
over all its coordinates, z' = (z - mean(z)) / std(z), the kernels' bandwidths then taken from the
standardised fresh draws). The standardised MMD sees only the shape of the distribution (correlations,
per-coordinate spread, non-Gaussianity), not its overall location and scale, which the summary reports
(``latent_mean``, ``latent_std``).

Units. The images are split into ``seed_sets`` disjoint chunks of n (n = size of a seed set); chunk
k is compared with the n fresh draws of seed set k. Each (rule, chunk) is one cached unit in the
results store. Reported per (latents, kernel, rule): the mean MMD^2 over chunks with its t interval,
the mean MMD, the two relative values and the paired difference of MMD^2 to the untouched network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from skiptune.adapters import MODES
from skiptune.analysis.base import AnalysisResult, cached
from skiptune.analysis.scoring import canonical_rules, estimate_columns
from skiptune.core.checks import integer
from skiptune.core.checksums import state_dict_sha256, tensor_sha256
from skiptune.core.denoiser import DenoiserInfo
from skiptune.core.errors import InputError
from skiptune.core.stats import paired_difference, t_interval
from skiptune.experiment.generate import SamplingSpec
from skiptune.metrics.mmd import Kernel, mmd2
from skiptune.runs.sweep import seed_sets as split_seed_sets
from skiptune.sampling import (
    DETERMINISTIC,
    GRIDS,
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
#: the latent sets compared with N(0, I): as inverted, and standardised to mean 0 and variance 1
LATENTS = ("raw", "standardised")
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


def standardise(z: torch.Tensor) -> torch.Tensor:
    """``(z - mean(z)) / std(z)`` with one scalar mean and std over all entries (float64): the set's overall
    location and scale removed, its shape kept."""
    z = torch.as_tensor(z, dtype=torch.float64)
    std = z.std()
    if not float(std) > 0:
        raise InputError("cannot standardise a latent set whose entries are all equal")
    return (z - z.mean()) / std


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


@dataclass(frozen=True)
class InversionConfig:
    """Every setting of :func:`run_inversion` (the defaults are those of ``skiptune analyze inversion``).

    ``rules`` (canonical form; ``none`` is added first if missing) are active during the inversion with
    ``sampler`` (deterministic) over ``steps`` steps of ``grid``; ``seeds`` is the first noise seed set
    (its size n is the number of images per chunk) and ``seed_sets`` the number of chunks / seed sets;
    ``rbf_scales`` are the RBF bandwidths in multiples of the median distance; ``unbiased``: eq. 6
    (else the V-statistic); ``data_id`` names the images in the stored configs. Validated on
    construction (:class:`~skiptune.core.errors.InputError` naming the setting and the fix).
    """

    rules: tuple[str, ...] = ("none", "layer:0.7", "const:0.7")
    sampler: str = "heun"
    steps: int = 9
    grid: str = "edm"
    seeds: str = "0-99"
    seed_sets: int = 3
    rbf_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    unbiased: bool = True
    mode: str = "concat"
    batch: int = 250
    device: str = "cpu"
    data_id: str = ""

    def __post_init__(self):
        if self.sampler not in DETERMINISTIC:
            raise InputError(f"InversionConfig.sampler: inversion needs a deterministic sampler, one of "
                             f"{sorted(DETERMINISTIC)}; got {self.sampler!r}")
        try:
            rules = canonical_rules(self.rules)
        except ValueError as exc:
            raise InputError(f"InversionConfig.rules: {exc} (give rules such as ('none', 'layer:0.7'))") from None
        object.__setattr__(self, "rules", tuple(rules) if "none" in rules else ("none", *rules))
        object.__setattr__(self, "steps", integer(self.steps, minimum=1, what="InversionConfig.steps"))
        object.__setattr__(self, "seed_sets", integer(self.seed_sets, minimum=1, what="InversionConfig.seed_sets"))
        object.__setattr__(self, "batch", integer(self.batch, minimum=1, what="InversionConfig.batch"))
        if self.grid not in GRIDS:
            raise InputError(f"InversionConfig.grid: unknown grid {self.grid!r}; use one of {', '.join(GRIDS)}")
        if self.mode not in MODES:
            raise InputError(f"InversionConfig.mode: unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        try:
            split_seed_sets(self.seeds, self.seed_sets)
        except (TypeError, ValueError) as exc:
            raise InputError(f"InversionConfig.seeds: {exc} (give a seed set such as '0-99')") from None
        object.__setattr__(self, "rbf_scales", _scales(self.rbf_scales))

    @property
    def sets(self) -> list[str]:
        """The noise seed sets: ``seeds`` and ``seed_sets - 1`` shifted copies."""
        return split_seed_sets(self.seeds, self.seed_sets)

    @property
    def n_per_set(self) -> int:
        return len(SeedNoise(self.sets[0]).seeds)


def _scales(values) -> tuple[float, ...]:
    try:
        scales = tuple(float(c) for c in values)
    except (TypeError, ValueError):
        scales = (math.nan,)
    if not all(math.isfinite(c) and c > 0 for c in scales):
        raise InputError(f"InversionConfig.rbf_scales: RBF bandwidth scales must be numbers > 0 (multiples of "
                         f"the median distance, e.g. (0.5, 1, 2)), got {values!r}")
    return scales


def _check_images(net: nn.Module, images: torch.Tensor, config: InversionConfig) -> None:
    """InputError unless there are enough images for the chunks of ``config`` and they fit ``net``."""
    n, n_sets = config.n_per_set, config.seed_sets
    if images.ndim != 4:
        raise InputError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[0] < n * n_sets:
        raise InputError(f"inversion needs {n_sets} chunks of {n} images = {n * n_sets}, but only "
                         f"{images.shape[0]} are available; use fewer seeds per set or fewer seed sets")
    shape = tuple(images.shape[1:])
    expected = DenoiserInfo.of(net).shape
    if shape != expected:
        raise InputError(f"images are {shape} but the network expects {expected}")


@dataclass(frozen=True)
class _Inverter:
    """What every (rule, chunk) unit shares: the network, the settings, the sigma grid and the model id."""

    net: nn.Module
    config: InversionConfig
    srange: tuple[float, float]
    sig: torch.Tensor
    model_id: str

    def unit(self, rule: str, chunk: torch.Tensor, labels: torch.Tensor | None, noise_seeds: str,
             store: Store | None) -> tuple[dict, list[str]]:
        """One cached unit: the MMD^2 per kernel of the inverted ``chunk`` against the draws of ``noise_seeds``."""
        cfg = self.config
        ref = SeedNoise(noise_seeds, dtype=torch.float64).randn([int(np.prod(chunk.shape[1:]))])
        kernels = noise_kernels(ref, cfg.rbf_scales)
        key = {"model": self.model_id, "rule": rule, "mode": cfg.mode, **sampler_fields(cfg.sampler),
               "steps": cfg.steps, "grid": cfg.grid, "sigma_range": list(self.srange), "images": tensor_sha256(chunk),
               "data": cfg.data_id, "noise_seeds": noise_seeds,
               "kernels": {name: kern.describe() for name, kern in kernels.items()}, "unbiased": cfg.unbiased,
               "latents": list(LATENTS)}

        def compute():
            r = as_rule(rule)
            tuning = (nullcontext() if isinstance(r, Identity) else
                      skip_tuning(self.net, r, mode=cfg.mode, sigma_range=self.srange))
            with tuning:
                z = invert_to_noise(EDMDenoiser(self.net), chunk.to(cfg.device), self.sig.to(cfg.device),
                                    sampler=cfg.sampler, labels=labels, batch=cfg.batch).cpu()
            ref_s = standardise(ref)
            return {"mmd2": noise_mmd(z, ref, kernels, unbiased=cfg.unbiased),
                    "mmd2_standardised": noise_mmd(standardise(z), ref_s, noise_kernels(ref_s, cfg.rbf_scales),
                                                   unbiased=cfg.unbiased),
                    "bandwidth": {name: kern.sigma for name, kern in kernels.items() if kern.sigma is not None},
                    "latent_mean": float(z.mean()), "latent_std": float(z.std())}

        return cached(store, "inversion", key, compute), list(kernels)


def _mmd(v: float) -> float:
    """The MMD of an (unbiased, possibly slightly negative) MMD^2 estimate: sqrt(max(v, 0))."""
    return math.sqrt(max(v, 0.0))


def _table(per: dict[tuple[str, int], dict], rules: Sequence[str], kernel_names: list[str],
           n_sets: int) -> tuple[list[dict], dict]:
    """Rows per (latents, kernel, rule): mean MMD^2 over chunks, mean MMD, both relative to untouched, the paired
    difference of MMD^2; and the summary."""
    rows = []
    ks = range(n_sets)
    for latents in LATENTS:
        field = "mmd2" if latents == "raw" else "mmd2_standardised"
        for kern in kernel_names:
            base_v = [per[("none", k)][field][kern] for k in ks]
            base, base_mmd = t_interval(base_v), float(np.mean([_mmd(v) for v in base_v]))
            for rule in rules:
                vals = [per[(rule, k)][field][kern] for k in ks]
                e, mmd = t_interval(vals), float(np.mean([_mmd(v) for v in vals]))
                diff = paired_difference(e, base)
                rows.append({"latents": latents, "kernel": kern, "rule": rule, **estimate_columns(e, "mmd2"),
                             "mmd": mmd, "relative_mmd": mmd / base_mmd if base_mmd > 0 else math.nan,
                             "relative_mmd2": e.mean / base.mean if base.mean > 0 else math.nan,
                             **estimate_columns(diff, "diff")})
    summary: dict = {}
    for rule in rules:
        summary[f"latent_std[{rule}]"] = float(np.mean([per[(rule, k)]["latent_std"] for k in ks]))
        summary[f"latent_mean[{rule}]"] = float(np.mean([per[(rule, k)]["latent_mean"] for k in ks]))
        if rule != "none":
            for latents in LATENTS:
                rel = [r["relative_mmd"] for r in rows if r["rule"] == rule and r["latents"] == latents]
                summary[f"kernels_below_1[{rule}, {latents}]"] = f"{sum(v < 1 for v in rel)}/{len(rel)}"
    return rows, summary


def _notes(config: InversionConfig, sig: torch.Tensor, rows: list[dict]) -> list[str]:
    sets, n, steps = config.sets, config.n_per_set, config.steps
    nfe = 2 * steps if config.sampler == "heun" else steps
    notes = [
        f"{len(sets)} chunks of {n} real images ({config.data_id or 'given images'}), each inverted with "
        f"{config.sampler} over {steps} steps (about {nfe} NFE) from sigma {float(sig[0]):g} to {float(sig[-1]):g}, "
        f"latent / sigma_max compared with {n} fresh N(0, I) draws of seed set k ({', '.join(sets)}); seed 003 "
        "Table 13: 10k vs 10k, 9 steps, rho 0.7.",
        f"{'Unbiased MMD^2 (seed 003 eq. 6)' if config.unbiased else 'Biased MMD^2 (V-statistic)'}; kernel bandwidths "
        "from the fresh draws (the same kernels for every rule); relative_mmd = mean MMD(rule) / mean MMD(untouched) "
        "with MMD = sqrt(max(MMD^2, 0)) per chunk (Table 13's relative MMD distance), relative_mmd2 = mean MMD^2(rule) "
        "/ mean MMD^2(untouched); diff = paired difference of MMD^2 over chunks with a 95% t interval.",
        "latents = raw: z as inverted; standardised: z and the fresh draws each mapped to (v - mean) / std with one "
        "scalar mean and std per set, kernels re-fitted on the standardised draws: the shape of the latent "
        "distribution without its overall scale (latent_std in the summary).",
    ]
    if any(math.isnan(r["relative_mmd2"]) for r in rows):
        notes.append("a relative value is NaN where the untouched network's mean MMD^2 is <= 0 (the unbiased "
                     "estimate of a discrepancy too small for this sample size).")
    return notes


def run_inversion(net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                  config: InversionConfig = InversionConfig(), *, store: Store | None = None,
                  progress: bool = False) -> AnalysisResult:
    """Relative MMD (and MMD^2) between inverted real images and fresh N(0, I) draws per kernel, for the raw and
    the standardised latents (Table 13).

    ``images`` ([N, C, H, W] in [-1, 1]) and their class ``labels`` (needed for class-conditional
    networks; None otherwise): the first n * ``config.seed_sets`` are used, in chunks of n, n the size of
    the seed set ``config.seeds``; chunk k is compared with the standard normal draws of the k-th seed set
    (``seeds``, then shifted copies).
    """
    sets, n = config.sets, config.n_per_set
    _check_images(net, images, config)
    net = net.to(config.device).eval()
    srange = SamplingSpec(config.sampler, steps=config.steps, grid=config.grid).sigma_range(net)
    sig = inversion_grid(net, config.steps, config.grid, srange)
    onehot = _one_hot(labels, DenoiserInfo.of(net).label_dim, images.shape[0])
    inverter = _Inverter(net, config, srange, sig, state_dict_sha256(net))
    per: dict[tuple[str, int], dict] = {}
    kernel_names: list[str] = []
    bar = tqdm([(r, k) for r in config.rules for k in range(len(sets))], desc="inversion", unit="chunk",
               disable=not progress)
    for rule, k in bar:
        bar.set_postfix_str(f"{rule} chunk {k}")
        labels_k = onehot[k * n:(k + 1) * n].to(config.device) if onehot is not None else None
        per[(rule, k)], kernel_names = inverter.unit(rule, images[k * n:(k + 1) * n], labels_k, sets[k], store)
    rows, summary = _table(per, config.rules, kernel_names, len(sets))
    result_config = {"model": inverter.model_id, "data": config.data_id, "rules": list(config.rules),
                     **sampler_fields(config.sampler), "steps": config.steps, "grid": config.grid,
                     "sigma_range": list(srange), "mode": config.mode, "noise_seed_sets": sets, "n_per_set": n,
                     "kernels": kernel_names, "unbiased": config.unbiased, "latents": list(LATENTS)}
    return AnalysisResult(NAME, result_config, rows, summary, _notes(config, sig, rows))
