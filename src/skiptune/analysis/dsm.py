"""Denoising score-matching loss per noise level in pixel, feature and Haar wavelet spaces (seed 003, Tables 8, 9, 14).

Seed 003, Sec. 5.1, compares the untouched network with a Skip-Tuned one on

    L_pixel   = E_t omega_t E_x ||x_theta(x_t, t) - x||^2,
    L_feature = E_t omega_t E_x ||f(x_theta(x_t, t)) - f(x)||^2,

with f a discriminative network (Inception-V3, ResNet-101, CLIP image encoder): Skip-Tuning raises
L_pixel but lowers L_feature (Table 8), most at intermediate sigma (Table 9); in Haar wavelet
sub-bands LL, LH, HL, HH of the error all losses rise (Sec. 6, Table 14).

Here, for clean held-out images y and n ~ N(0, I) (image j from seed ``seed + j``), each sample's
loss at noise level sigma is

- pixel: ``mean over C, H, W of (D(y + sigma n, sigma) - y)^2``;
- feature space of a registered extractor f (its FID feature): ``mean over feature dims of
  (f(D(.)) - f(y))^2``, with D(.) passed to f as float without rounding or clipping
  (:meth:`~skiptune.metrics.FeatureExtractor.float_features`);
- Haar band B: ``mean over the band's coefficients of W_B(D(.) - y)^2``, with W the one-level
  orthonormal 2-D Haar transform (:func:`haar2d`). W is orthonormal and each band holds a quarter of
  the coefficients, so the pixel loss is exactly the mean of the four band losses.

Rows are per (space, sigma, rule), for a fixed grid of sigmas (default the 5 levels of Table 9) and
for ``sigma = lognormal``: one EDM training draw ln sigma_j ~ N(-1.2, 1.2^2) per image, the loss
weighted by omega(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM's lambda), the
aggregate of Table 8. All rules see the same images, noise and sigmas, so differences to the
baseline are paired per image.

Normalisation. The paper writes squared l2 norms (sums over the dimensions) weighted by omega_t, and
its tables show the weighting: Table 9's ResNet-101 loss is 99.93 at sigma = 0.002 and 12.69 at
sigma = 80, which an unweighted loss cannot be (the denoiser is nearly exact at sigma = 0.002), but
lambda(0.002) = 250,004 and lambda(80) = 4.0 make them 4.0e-4 and 3.2 before weighting. Its Table 8
pixel loss, 0.5238, is the size of EDM's per-element weighted training loss (as a sum over the
12,288 dimensions of a 64x64x3 image it would mean 4.3e-5 per dimension). So every row carries the
loss in three normalisations, which differ only by a constant factor per (space, sigma), so that
paired differences and relative changes (``rel_diff``) are the same in all three:

- ``loss``: the mean over dimensions as above (unweighted at a fixed sigma);
- ``loss_weighted`` = lambda(sigma) * ``loss`` at a fixed sigma (Table 9's form; the log-normal
  aggregate is weighted already, so there it equals ``loss``);
- ``loss_sum`` = ``dims`` * ``loss_weighted``: the squared norm summed over the ``dims`` dimensions of
  the space (C*H*W pixels, C*H*W/4 per Haar band, the feature width), the paper's ||.||_2^2.

The summary gives the pixel/feature balance of the weighted aggregate, L_feature / L_pixel of the
baseline, with means and with sums, beside the paper's Table 8 ratios (Inception-V3 4.3466 / 0.5238 =
8.30, ResNet-101 58.9, CLIP 24.1): this is the balance of the Table 12 hybrid loss L_pixel + L_feature.
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
    attached,
    batches,
    check_image_count,
    check_rule,
    denoise,
    edm_lognormal_sigmas,
    images_for,
    interval,
    one_hot,
    seeded_noise,
    setting_rule,
    setting_sigmas,
)
from skiptune.core.checks import integer
from skiptune.core.checksums import state_dict_sha256, tensor_sha256
from skiptune.core.denoiser import DenoiserInfo
from skiptune.core.errors import InputError
from skiptune.train.loss import edm_weight

NAME = "dsm"
HELP = "score-matching loss per sigma in pixel, feature and Haar spaces, baseline vs tuned (Tables 8, 9, 14)"
BANDS = ("LL", "LH", "HL", "HH")
LOGNORMAL = "lognormal"
#: the log-normal noise levels are drawn from a generator seeded ``seed + LOGNORMAL_SEED_OFFSET``
LOGNORMAL_SEED_OFFSET = 2_000_000


@dataclass(frozen=True)
class DsmConfig:
    """Settings of :func:`run_dsm`, checked on construction; the defaults are those of ``skiptune analyze dsm``.

    ``rules``: the baseline rule first, then at least one rule to compare, ``;``-separated or a
    sequence, kept as the tuple of distinct canonical rule strings (their fit to the network is
    checked when run); ``sigmas``: the fixed noise levels (as in
    :class:`~skiptune.analysis.norms.NormsConfig`); ``lognormal``: add the EDM-weighted log-normal
    aggregate; ``seed``: noise seed of the first image (image j uses ``seed + j``); ``batch``:
    images per forward pass.
    """

    rules: str | Sequence[str] = "none;const:0.7"
    sigmas: str | Sequence[float] = "edm:5"
    lognormal: bool = True
    seed: int = 0
    batch: int = 100

    def __post_init__(self):
        rules = [r.strip() for r in self.rules.split(";") if r.strip()] if isinstance(self.rules, str) \
            else list(self.rules)
        if len(rules) < 2:
            raise InputError(f"rules {self.rules!r}: give a baseline rule and at least one rule to compare, "
                             "e.g. 'none;const:0.7'")
        object.__setattr__(self, "rules", tuple(dict.fromkeys(setting_rule(r) for r in rules)))
        object.__setattr__(self, "sigmas", setting_sigmas(self.sigmas))
        if not isinstance(self.lognormal, bool):
            raise InputError(f"lognormal must be True or False (add the log-normal aggregate), got {self.lognormal!r}")
        value = integer(self.seed, minimum=0, what="seed", meaning="the noise seed of the first image")
        object.__setattr__(self, "seed", value)
        value = integer(self.batch, minimum=1, what="batch", meaning="images per forward pass")
        object.__setattr__(self, "batch", value)

    @property
    def lognormal_seed(self) -> int:
        return self.seed + LOGNORMAL_SEED_OFFSET


# -- Haar wavelet ------------------------------------------------------------------------------------------------------

def haar2d(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One level of the orthonormal 2-D Haar transform of ``x`` ([..., H, W], H and W even).

    For each 2x2 block ``[[a, b], [c, d]]`` (rows top to bottom): ``LL = (a + b + c + d)/2``
    (approximation), ``LH = (a + b - c - d)/2`` (horizontal detail: top row minus bottom row),
    ``HL = (a - b + c - d)/2`` (vertical detail), ``HH = (a - b - c + d)/2`` (diagonal detail);
    the names follow seed 003, Fig. 9, and PyWavelets' cH, cV, cD up to sign. The four 2x2 patterns
    are orthonormal, so ``sum of squares over all bands = sum of squares of x``.
    """
    h, w = x.shape[-2], x.shape[-1]
    if h % 2 or w % 2:
        raise InputError(f"the Haar transform needs even height and width, got {h}x{w}")
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return {"LL": (a + b + c + d) / 2, "LH": (a + b - c - d) / 2, "HL": (a - b + c - d) / 2,
            "HH": (a - b - c + d) / 2}


def ihaar2d(bands: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`haar2d` (the transform is orthonormal and symmetric: each pixel is half a sum)."""
    ll, lh, hl, hh = (bands[k] for k in BANDS)
    a = (ll + lh + hl + hh) / 2
    b = (ll + lh - hl - hh) / 2
    c = (ll - lh + hl - hh) / 2
    d = (ll - lh - hl + hh) / 2
    out = torch.empty((*ll.shape[:-2], 2 * ll.shape[-2], 2 * ll.shape[-1]), dtype=ll.dtype, device=ll.device)
    out[..., 0::2, 0::2], out[..., 0::2, 1::2], out[..., 1::2, 0::2], out[..., 1::2, 1::2] = a, b, c, d
    return out


# -- losses ------------------------------------------------------------------------------------------------------------

def sample_losses(denoised: torch.Tensor, clean: torch.Tensor, *, extractors: dict | None = None,
                  clean_features: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per-sample losses ``{space: [N]}`` of one batch: ``pixel``, the Haar bands and ``feature:<name>``.

    ``extractors`` maps a space name to ``(FeatureExtractor, feature)``; ``clean_features`` may hold
    ``f(clean)`` per space (computed here otherwise).
    """
    err = (denoised - clean).double()
    out = {"pixel": err.pow(2).flatten(1).mean(1)}
    if err.shape[-1] % 2 == 0 and err.shape[-2] % 2 == 0:
        for band, coef in haar2d(err).items():
            out[band] = coef.pow(2).flatten(1).mean(1)
    for space, (ext, feature) in (extractors or {}).items():
        f_d = ext.float_features(denoised, features=[feature])[feature].double()
        f_y = (clean_features or {}).get(space)
        if f_y is None:
            f_y = ext.float_features(clean, features=[feature])[feature].double()
        out[space] = (f_d - f_y.to(f_d.device)).pow(2).mean(1).cpu()
    return out


def _unit(net, images, noise, labels, rule, sigma, sigmas_per_image, sigma_data, extractors, clean_feats, batch):
    """Per-sample losses of one (rule, sigma) over all images, as lists (weighted for the lognormal unit)."""
    acc: dict[str, list[float]] = {}
    with torch.no_grad(), attached(net, rule):
        for sl in batches(len(images), batch):
            y = images[sl]
            s = sigmas_per_image[sl] if sigma == LOGNORMAL else torch.full((len(y),), float(sigma),
                                                                            dtype=torch.float64)
            x = y + s.to(torch.float32).reshape(-1, 1, 1, 1) * noise[sl]
            dn = denoise(net, x, s, None if labels is None else labels[sl])
            losses = sample_losses(dn, y, extractors=extractors,
                                   clean_features={k: v[sl] for k, v in clean_feats.items()})
            w = edm_weight(s, sigma_data) if sigma == LOGNORMAL else None
            for k, v in losses.items():
                acc.setdefault(k, []).extend((v * w if w is not None else v).tolist())
    return acc


def run_dsm(net: nn.Module, images: torch.Tensor, config: DsmConfig, *, extractors: dict | None = None,
            labels: torch.Tensor | None = None, store=None, progress: bool = False,
            model_id: str | None = None) -> AnalysisResult:
    """Score-matching losses of the baseline (first rule) and tuned rules, per space and sigma (Tables 8, 9, 14).

    ``images``: clean held-out images [N, C, H, W] in [-1, 1], N >= 2 (with their ``labels`` for a
    class-conditional network); ``config``: see :class:`DsmConfig`. ``extractors``: the feature
    networks, a list of :class:`~skiptune.metrics.FeatureExtractor` (each used with its FID feature)
    or a dict ``space name -> (extractor, feature)``; none by default (pixel and Haar spaces only).
    Each (rule, sigma) is one unit in ``store``; ``model_id`` names the model in the stored config
    (the sha256 of its weights when None).
    """
    images = images_for(net, images)
    n = check_image_count(len(images))
    rule_list = [check_rule(net, r) for r in config.rules]
    sig: list = list(config.sigmas) + ([LOGNORMAL] if config.lognormal else [])
    spaces = _spaces(extractors)
    sigma_data = DenoiserInfo.of(net).sigma_data
    onehot = one_hot(net, labels, n)
    noise = seeded_noise(config.seed, n, images.shape[1:])
    sigmas_per_image = edm_lognormal_sigmas(n, torch.Generator().manual_seed(config.lognormal_seed))
    clean_feats = _clean_features(images, spaces, config.batch)
    feat_cfg = {k: {"extractor": ext.name, "feature": f, "weights_sha256": ext.weights_sha256}
                for k, (ext, f) in spaces.items()}
    stored = {"model": model_id or state_dict_sha256(net), "data": tensor_sha256(images), "n": n,
              "seed": config.seed, "rules": rule_list, "sigmas": sig, "features": feat_cfg, "sigma_data": sigma_data,
              "lognormal_seed": config.lognormal_seed if config.lognormal else None}
    unit_base = {k: v for k, v in stored.items() if k not in ("rules", "sigmas")}
    units = {}
    work = [(r, s) for r in rule_list for s in sig]
    for r, s in tqdm(work, desc="dsm", unit="unit", disable=not progress):
        units[(r, s)] = cached(store, "dsm", unit_base | {"rule": r, "sigma": s},
                               lambda r=r, s=s: _unit(net, images, noise, onehot, r, s, sigmas_per_image,
                                                      sigma_data, spaces, clean_feats, config.batch))
    first = units[(rule_list[0], sig[0])]  # units read back from the store have their keys sorted: fix the order
    names = [k for k in ("pixel", *BANDS) if k in first] + list(spaces)
    npix = int(images[0].numel())
    dims = {"pixel": npix, **dict.fromkeys(BANDS, npix // 4), **{k: int(v.shape[1]) for k, v in clean_feats.items()}}
    rows, summary = _rows(names, sig, rule_list, units, dims, sigma_data)
    notes = _notes(n, config, [s for s in sig if s != LOGNORMAL], sigma_data, feat_cfg, rule_list[0])
    return AnalysisResult(NAME, stored, rows, summary, notes)


def _clean_features(images: torch.Tensor, spaces: dict, batch: int) -> dict[str, torch.Tensor]:
    """``f(y)`` of the clean images in every feature space (float64, on the CPU)."""
    with torch.no_grad():
        return {k: torch.cat([ext.float_features(images[sl], features=[f])[f].double().cpu()
                              for sl in batches(len(images), batch)]) for k, (ext, f) in spaces.items()}


def _rows(names: list[str], sig: list, rule_list: list[str], units: dict, dims: dict[str, int],
          sigma_data: float) -> tuple[list[dict], dict]:
    """One row per (space, sigma, rule), the tuned rules with their paired difference to the baseline (the first
    rule); the summary: weighted differences of the log-normal aggregate, the count of lowered feature losses and
    the pixel/feature balance of the aggregate."""
    base = rule_list[0]
    rows, summary = [], {}
    for space in names:
        for s in sig:
            weight = 1.0 if s == LOGNORMAL else float(edm_weight(torch.tensor(float(s), dtype=torch.float64),
                                                                 sigma_data))
            b = units[(base, s)][space]
            for r in rule_list:
                v = units[(r, s)][space]
                row = {"space": space, "sigma": s, "rule": r, **interval(v, "loss")}
                row |= {"weight": weight if s != LOGNORMAL else "per image", "dims": dims[space],
                        "loss_weighted": weight * row["loss"], "loss_sum": weight * dims[space] * row["loss"]}
                if r != base:
                    diff = [x - y for x, y in zip(v, b, strict=True)]
                    row |= interval(diff, "diff")
                    row["loss_base"] = _mean(b)
                    row["rel_diff"] = row["diff"] / row["loss_base"] if row["loss_base"] else math.nan
                    if s == LOGNORMAL:
                        summary[f"{space} weighted diff [{r}]"] = row["diff"]
                rows.append(row)
    for r in rule_list[1:]:
        feat = [row for row in rows if row["rule"] == r and row["space"].startswith("feature:")
                and row["sigma"] != LOGNORMAL]
        if feat:
            summary[f"feature losses lowered at [{r}]"] = f"{sum(row['diff'] < 0 for row in feat)}/{len(feat)} sigmas"
    summary.update(feature_pixel_balance(rows, base))
    return rows, summary


#: seed 003 Table 8, baseline EDM: L_feature / L_pixel of the weighted aggregate for each feature network
PAPER_BALANCE = {"inception-v3": 4.3466 / 0.5238, "resnet-101": 30.8421 / 0.5238, "clip-vit": 12.6432 / 0.5238}


def feature_pixel_balance(rows: list[dict], base: str) -> dict[str, float]:
    """L_feature / L_pixel of the baseline's weighted aggregate per feature space, with means over dimensions
    (``mean``) and with sums (``sum``, the paper's squared norms); empty without the aggregate or features."""
    agg = {row["space"]: row for row in rows if row["sigma"] == LOGNORMAL and row["rule"] == base}
    if "pixel" not in agg:
        return {}
    pix = agg["pixel"]
    out = {}
    for space, row in agg.items():
        if space.startswith("feature:"):
            out[f"{space} / pixel, aggregate, means"] = row["loss"] / pix["loss"]
            out[f"{space} / pixel, aggregate, sums"] = row["loss_sum"] / pix["loss_sum"]
    return out


def _notes(n: int, config: DsmConfig, fixed: list[float], sigma_data: float, feat_cfg: dict, base: str) -> list[str]:
    seed, lognormal = config.seed, config.lognormal
    return [
        f"{n} held-out images, noise from seeds {seed}..{seed + n - 1}; fixed sigmas "
        f"{', '.join(f'{s:.4g}' for s in fixed)}" + (f"; lognormal: one draw ln sigma ~ N(-1.2, 1.2^2) per image "
                                                   f"(generator seed {config.lognormal_seed}), loss weighted by "
                                                   f"(sigma^2 + {sigma_data:g}^2) / (sigma {sigma_data:g})^2"
                                                   if lognormal else "") + ".",
        "pixel = mean over C, H, W of (D(y + sigma n) - y)^2; LL/LH/HL/HH = mean square of the one-level orthonormal "
        "Haar coefficients of D - y (their mean equals pixel); feature:<net> = mean over feature dims of "
        "(f(D) - f(y))^2 with f: " + (", ".join(f"{k} = {c['extractor']} '{c['feature']}'"
                                                  for k, c in feat_cfg.items()) or "none") + ".",
        f"Baseline rule: {base}. diff = tuned - baseline per image (paired, in the units of loss), rel_diff = diff / "
        "baseline loss; intervals: 95% Student-t over images. loss_weighted = lambda(sigma) loss at a fixed sigma (the "
        "form of Table 9), loss_sum = dims x loss_weighted (the paper's squared norms, summed over the space's dims).",
        "Paper's balance L_feature / L_pixel of Table 8 (baseline): Inception-V3 8.30, ResNet-101 58.9, CLIP 24.1.",
        "Paper (EDM ImageNet-64, rho 0.8 vs 1): pixel 0.5238 -> 0.5253 (up), Inception-V3 4.3466 -> 4.3219, "
        "ResNet-101 30.8421 -> 30.7297, CLIP 12.6432 -> 12.4550 (down, Table 8); ResNet-101 gain largest at "
        "sigma 17.5 (Table 9); all Haar bands up slightly (Table 14).",
    ]


def _mean(v):
    return math.fsum(v) / len(v)


def _spaces(extractors) -> dict:
    if extractors is None:
        return {}
    if isinstance(extractors, dict):
        return dict(extractors)
    return {f"feature:{ext.name}": (ext, ext.feature_for("fid")) for ext in extractors}
