"""Per-site norm ratio of encoder skips to decoder tensors, prop_i = ||d_i|| / ||u_i|| (seed 003, Sec. 3, Fig. 2).

At every skip site i the decoder joins its tensor u_i with the encoder skip d_i, ``cat(u_i, d_i)``.
Seed 003 measures their relative strength ``prop_i = ||d_i||_2 / ||u_i||_2`` and its layer average
``(1/k) sum_i prop_i`` (EDM ImageNet-64: 0.446; the distilled DI and CD models: 0.433 and 0.404), the
observation that motivates scaling d_i down. Here the norms are Frobenius norms over (C, H, W) of
one sample, the ratio is taken per sample and averaged over N real images ``y``, each noised as
``x = y + sigma n`` (n ~ N(0, I) from seed ``seed + j`` for image j, the same n at every sigma),
and over a grid of noise levels. The paper does not state its data or noise levels; the default
grid is the 10 levels of the EDM sampler at 19 NFE (``edm:10``, 80 ... 0.002), so the average is
over the noise levels the network meets while sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from skiptune.analysis.base import AnalysisResult, cached
from skiptune.analysis.denoising import (
    attach_joins,
    attached,
    batches,
    check_image_count,
    check_rule,
    denoise,
    images_for,
    interval,
    one_hot,
    seeded_noise,
    setting_rule,
    setting_sigmas,
)
from skiptune.core.checks import integer
from skiptune.core.checksums import state_dict_sha256, tensor_sha256

NAME = "norms"
HELP = "per-site skip-to-decoder norm ratio ||d_i|| / ||u_i|| (Fig. 2)"
PAPER_MEAN_PROP = {"EDM": 0.446, "DI-distilled EDM": 0.433, "CD-distilled EDM": 0.404}


@dataclass(frozen=True)
class NormsConfig:
    """Settings of :func:`run_norms`, checked on construction; the defaults are those of ``skiptune analyze norms``.

    ``sigmas``: the noise levels, a spec of :func:`~skiptune.analysis.denoising.parse_sigmas` (``edm:10``,
    ``lognormal:K``, ``80,5,0.5``) or a sequence, kept as the tuple of values; ``seed``: noise seed of
    the first image (image j uses ``seed + j``); ``rule``: the Skip-Tuning rule attached while measuring,
    kept in canonical form (its fit to the network is checked when run); ``batch``: images per forward pass.
    """

    sigmas: str | Sequence[float] = "edm:10"
    seed: int = 0
    rule: str = "none"
    batch: int = 64

    def __post_init__(self):
        object.__setattr__(self, "sigmas", setting_sigmas(self.sigmas))
        value = integer(self.seed, minimum=0, what="seed", meaning="the noise seed of the first image")
        object.__setattr__(self, "seed", value)
        object.__setattr__(self, "rule", setting_rule(self.rule))
        value = integer(self.batch, minimum=1, what="batch", meaning="images per forward pass")
        object.__setattr__(self, "batch", value)


def _measure(net: nn.Module, images: torch.Tensor, noise: torch.Tensor, sigma: float, rule: str,
             labels: torch.Tensor | None, batch: int, num_sites: int) -> dict:
    """Per-sample ``||d_i||``, ``||u_i||`` and their ratio at every site, for one noise level."""
    d_norm: list[list[float]] = [[] for _ in range(num_sites)]
    u_norm: list[list[float]] = [[] for _ in range(num_sites)]

    def record(i, u, d):
        d_norm[i] += d.detach().flatten(1).double().norm(dim=1).tolist()
        u_norm[i] += u.detach().flatten(1).double().norm(dim=1).tolist()
        return u, d

    with torch.no_grad(), attached(net, rule):
        handles = attach_joins(net, record)
        try:
            for sl in batches(len(images), batch):
                x = images[sl] + sigma * noise[sl]
                denoise(net, x, sigma, None if labels is None else labels[sl])
        finally:
            for h in handles:
                h.remove()
    if any(len(v) != len(images) for v in d_norm):
        raise RuntimeError("a skip site was not visited once per sample; is every site used in the forward pass?")
    prop = [[dn / un if un > 0 else math.inf for dn, un in zip(d, u, strict=True)]
            for d, u in zip(d_norm, u_norm, strict=True)]
    return {"prop": prop, "d_norm": [sum(v) / len(v) for v in d_norm], "u_norm": [sum(v) / len(v) for v in u_norm]}


def run_norms(net: nn.Module, images: torch.Tensor, config: NormsConfig, *, labels: torch.Tensor | None = None,
              store=None, progress: bool = False, model_id: str | None = None) -> AnalysisResult:
    """prop_i = ||d_i||_2 / ||u_i||_2 per site, per noise level and averaged (seed 003, Fig. 2).

    ``images``: real images [N, C, H, W] in [-1, 1], N >= 2 (with their ``labels`` for a
    class-conditional network); ``config``: see :class:`NormsConfig`. With a rule attached, d_i is
    the scaled skip rho_i d_i, and the u_i of outer sites change too. Each noise level is one unit in
    ``store``; ``model_id`` names the model in the stored config (the sha256 of its weights when None).
    """
    from skiptune.adapters import find_adapter

    images = images_for(net, images)
    n = check_image_count(len(images))
    rule = check_rule(net, config.rule)
    sites = find_adapter(net).sites(net)
    onehot = one_hot(net, labels, n)
    noise = seeded_noise(config.seed, n, images.shape[1:])
    sig = list(config.sigmas)
    stored = {"model": model_id or state_dict_sha256(net), "data": tensor_sha256(images), "n": n,
              "seed": config.seed, "rule": rule, "sigmas": sig, "batch": config.batch}
    unit_base = {k: v for k, v in stored.items() if k != "sigmas"}
    units = {}
    for s in tqdm(sig, desc="norms", unit="sigma", disable=not progress):
        units[s] = cached(store, "norms", unit_base | {"sigma": s},
                          lambda s=s: _measure(net, images, noise, s, rule, onehot, config.batch, len(sites)))
    rows, per_image_mean = _rows(sites, sig, units, n)
    k = len(sites)
    site_means = [r["prop"] for r in rows[:k]]
    summary = {**interval(per_image_mean, "mean_prop"),
               "mean_prop": sum(site_means) / k,  # the same mean, summed by site
               "slope_per_site": _slope(list(range(k)), site_means), "num_sites": k, "n_images": n,
               "num_sigmas": len(sig)}
    return AnalysisResult(NAME, stored, rows, summary, _notes(n, sig, config.seed, rule, k))


def _rows(sites, sig: list[float], units: dict, n: int) -> tuple[list[dict], list[float]]:
    """The table (first one row per site averaged over sigma, then one per sigma and site) and, per image,
    its ratio averaged over sites and noise levels."""
    rows, per_site_avg = [], []
    for site in sites:
        i = site.index
        # per image: its ratio averaged over the noise levels, so the interval is over images
        per_image = [sum(units[s]["prop"][i][j] for s in sig) / len(sig) for j in range(n)]
        per_site_avg.append(per_image)
        rows.append({"site": i, "name": site.name, "resolution": site.resolution, "sigma": "mean",
                     **interval(per_image, "prop"),
                     "d_norm": sum(units[s]["d_norm"][i] for s in sig) / len(sig),
                     "u_norm": sum(units[s]["u_norm"][i] for s in sig) / len(sig)})
    for s in sig:
        for site in sites:
            i = site.index
            rows.append({"site": i, "name": site.name, "resolution": site.resolution, "sigma": s,
                         **interval(units[s]["prop"][i], "prop"), "d_norm": units[s]["d_norm"][i],
                         "u_norm": units[s]["u_norm"][i]})
    k = len(sites)
    return rows, [sum(per_site_avg[i][j] for i in range(k)) / k for j in range(n)]


def _notes(n: int, sig: list[float], seed: int, rule: str, k: int) -> list[str]:
    return [
        f"prop_i = ||d_i||_2 / ||u_i||_2 (Frobenius over C, H, W of one sample) at the join of skip site i "
        f"(0 = innermost), per sample, averaged over {n} real images x {len(sig)} noise levels "
        f"sigma = {', '.join(f'{s:.4g}' for s in sig)}; images noised as y + sigma n with n from seeds "
        f"{seed}..{seed + n - 1} (the same n at every sigma). Rule attached: {rule}.",
        "Intervals: 95% Student-t over images (each image's ratio averaged over the noise levels for "
        "sigma = mean).",
        "mean_prop = (1/k) sum_i prop_i, seed 003 Sec. 3: EDM ImageNet-64 0.446, DI-distilled 0.433, "
        "CD-distilled 0.404 (data and noise levels not stated in the paper).",
        f"slope_per_site: least-squares slope of prop_i against i (innermost 0 -> outermost {k - 1}).",
    ]


def _slope(x: list[float], y: list[float]) -> float:
    if len(x) < 2:
        return math.nan
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum((a - mx) ** 2 for a in x)
