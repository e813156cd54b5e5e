"""Complexity of the denoiser, E_x ||dD(x)/dx||, against rho (seed 003, eq. 3, Table 1, Fig. 3).

Seed 003, eq. (3), measures the complexity of the network U by ``E_x ||autograd_x(U(x))||_2`` and
reports it for EDM and distilled models (Table 1: EDM 0.1219 at sigma = 80, 0.9425 at sigma = 5)
and against the skip coefficient rho (Fig. 3: it grows monotonically as rho decreases below 1).
For an image-valued U the gradient is the Jacobian ``J = dU/dx`` (d x d for d = C H W), and the
paper does not say which matrix norm it takes. We report, per sample, three readings of it:

- ``frobenius``: ``||J||_F``, the l2 norm of the flattened gradient tensor (the headline number);
- ``spectral``: ``||J||_2``, the largest singular value;
- ``sum_grad``: ``||J^T 1||_2``, the norm of ``autograd.grad(U(x).sum(), x)``, what a literal
  ``autograd`` of the summed output returns.

U is the preconditioned denoiser ``D(x, sigma)`` at a fixed sigma, and x runs over noisy real
images ``x = y + sigma n`` (the inputs D meets at that noise level). Estimators: ``exact`` builds J
row by row with d vector-Jacobian products (batched); ``hutchinson`` estimates
``||J||_F^2 = E_v ||J^T v||^2`` with Rademacher probes v (unbiased for the square; its square root
is reported) and computes ``sum_grad`` exactly, but not the spectral norm; ``auto`` is exact up to
d = 1024.
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
from skiptune.core.errors import InputError

NAME = "complexity"
HELP = "denoiser input-gradient norm E_x ||dD(x)/dx|| against rho (Table 1, Fig. 3)"
ESTIMATORS = ("auto", "exact", "hutchinson")
EXACT_MAX_DIM = 1024
PAPER_TABLE1 = {"EDM sigma=80": 0.1219, "CD EDM sigma=80": 0.3525, "EDM sigma=5": 0.9425, "DI EDM sigma=5": 8.4765}
#: the probe generators of image j are seeded ``seed + PROBE_SEED_OFFSET + j``
PROBE_SEED_OFFSET = 1_000_000


@dataclass(frozen=True)
class ComplexityConfig:
    """Settings of :func:`run_complexity`, checked on construction; the defaults are those of
    ``skiptune analyze complexity``.

    ``rules``: a sweep string (``"none;const:0.6:1.2:0.2"``, see :func:`skiptune.runs.sweep.expand_rules`)
    or a sequence of rules, kept as the tuple of canonical rule strings (their fit to the network is
    checked when run); ``sigmas``: the noise levels (as in :class:`~skiptune.analysis.norms.NormsConfig`);
    ``estimator``: one of :data:`ESTIMATORS`; ``probes``: Rademacher probes per image (hutchinson);
    ``seed``: noise seed of the first image (image j uses ``seed + j``; its probes
    ``seed + PROBE_SEED_OFFSET + j``); ``chunk``: vector-Jacobian products per batch.
    """

    rules: str | Sequence[str] = "const:0.6:1.2:0.2"
    sigmas: str | Sequence[float] = "80,5"
    estimator: str = "auto"
    probes: int = 32
    seed: int = 0
    chunk: int = 256

    def __post_init__(self):
        object.__setattr__(self, "rules", _setting_rules(self.rules))
        object.__setattr__(self, "sigmas", setting_sigmas(self.sigmas))
        if self.estimator not in ESTIMATORS:
            raise InputError(f"unknown estimator {self.estimator!r}; use one of {', '.join(ESTIMATORS)}")
        value = integer(self.probes, minimum=1, what="probes", meaning="Rademacher probes per image")
        object.__setattr__(self, "probes", value)
        value = integer(self.seed, minimum=0, what="seed", meaning="the noise seed of the first image")
        object.__setattr__(self, "seed", value)
        value = integer(self.chunk, minimum=1, what="chunk", meaning="vector-Jacobian products per batch")
        object.__setattr__(self, "chunk", value)

    @property
    def probe_seed(self) -> int:
        return self.seed + PROBE_SEED_OFFSET

    def estimator_for(self, dim: int) -> str:
        """The estimator used for inputs of ``dim`` dimensions (``auto``: exact up to :data:`EXACT_MAX_DIM`)."""
        if self.estimator != "auto":
            return self.estimator
        return "exact" if dim <= EXACT_MAX_DIM else "hutchinson"


def _setting_rules(rules: str | Sequence[str]) -> tuple[str, ...]:
    from skiptune.runs.sweep import expand_rules

    if isinstance(rules, str):
        return tuple(expand_rules(rules))
    out = tuple(setting_rule(r) for r in rules)
    if not out:
        raise InputError("rules: no rules given; give at least one, e.g. 'none;const:0.7'")
    return out


def _vjp_rows(net: nn.Module, x: torch.Tensor, sigma: float, label: torch.Tensor | None,
              cotangents: torch.Tensor) -> torch.Tensor:
    """``v_m^T J`` for each cotangent v_m ([M, *x.shape]), by one batched forward/backward of M copies of x."""
    m = cotangents.shape[0]
    xr = x.unsqueeze(0).expand(m, *x.shape).clone().requires_grad_(True)
    lab = None if label is None else label.unsqueeze(0).expand(m, -1)
    y = denoise(net, xr, sigma, lab)
    (g,) = torch.autograd.grad(y, xr, grad_outputs=cotangents.to(y.dtype))
    return g.reshape(m, -1).double()


def jacobian_norms(net: nn.Module, x: torch.Tensor, sigma: float, label: torch.Tensor | None = None, *,
                   estimator: str = "auto", probes: int = 32, generator: torch.Generator | None = None,
                   chunk: int = 256) -> dict[str, float]:
    """Norms of ``J = dD(x, sigma)/dx`` for one input x ([C, H, W]): ``frobenius``, ``spectral``, ``sum_grad``.

    ``exact``: J from d vector-Jacobian products with the unit vectors, ``chunk`` at a time;
    ``hutchinson``: ``sqrt(mean_k ||J^T v_k||^2)`` over ``probes`` Rademacher vectors drawn from
    ``generator`` (spectral is NaN). ``sum_grad = ||J^T 1||`` is exact in both.
    """
    if estimator not in ESTIMATORS:
        raise InputError(f"unknown estimator {estimator!r}; use one of {', '.join(ESTIMATORS)}")
    d = x.numel()
    if estimator == "auto":
        estimator = "exact" if d <= EXACT_MAX_DIM else "hutchinson"
    ones = torch.ones((1, *x.shape))
    sum_grad = float(_vjp_rows(net, x, sigma, label, ones).norm())
    if estimator == "exact":
        rows = []
        for start in range(0, d, chunk):
            idx = torch.arange(start, min(d, start + chunk))
            basis = torch.zeros((len(idx), d))
            basis[torch.arange(len(idx)), idx] = 1.0
            rows.append(_vjp_rows(net, x, sigma, label, basis.reshape(len(idx), *x.shape)))
        jac = torch.cat(rows)  # row r = d D_r / dx
        return {"frobenius": float(jac.norm()), "spectral": float(torch.linalg.matrix_norm(jac, ord=2)),
                "sum_grad": sum_grad}
    if probes < 1:
        raise InputError("probes must be >= 1")
    total = 0.0
    for start in range(0, probes, chunk):
        m = min(chunk, probes - start)
        v = torch.randint(0, 2, (m, *x.shape), generator=generator).to(torch.float32) * 2 - 1
        total += float((_vjp_rows(net, x, sigma, label, v) ** 2).sum())
    return {"frobenius": math.sqrt(total / probes), "spectral": math.nan, "sum_grad": sum_grad}


def _unit(net, images, noise, labels, rule: str, sigma: float, estimator: str,
          config: ComplexityConfig) -> dict[str, list[float]]:
    """Per-image Jacobian norms of one (rule, sigma), with the resolved ``estimator``."""
    out: dict[str, list[float]] = {"frobenius": [], "spectral": [], "sum_grad": []}
    with attached(net, rule):
        for j in range(len(images)):
            g = torch.Generator().manual_seed(config.probe_seed + j)
            x = images[j] + sigma * noise[j]
            norms = jacobian_norms(net, x, sigma, None if labels is None else labels[j], estimator=estimator,
                                   probes=config.probes, generator=g, chunk=config.chunk)
            for k, v in norms.items():
                out[k].append(v)
    return out


def _rho_of(rule: str) -> float | None:
    from skiptune.skip import as_rule

    r = as_rule(rule)
    if rule == "none":
        return 1.0
    return getattr(r, "rho", getattr(r, "bottom", None))


def run_complexity(net: nn.Module, images: torch.Tensor, config: ComplexityConfig, *,
                   labels: torch.Tensor | None = None, store=None, progress: bool = False,
                   model_id: str | None = None) -> AnalysisResult:
    """Per (rule, sigma): mean over images of the Jacobian norms of D (seed 003, eq. 3, Table 1, Fig. 3).

    ``images``: real images [N, C, H, W] in [-1, 1], N >= 2 (with their ``labels`` for a
    class-conditional network); ``config``: see :class:`ComplexityConfig`. The first untouched rule
    (``none`` or ``const:1``) is the baseline for the paired ratios ``frobenius / frobenius(baseline)``
    on the same inputs. Each (rule, sigma) is one unit in ``store``; ``model_id`` names the model in
    the stored config (the sha256 of its weights when None).
    """
    images = images_for(net, images)
    n = check_image_count(len(images))
    rule_list = [check_rule(net, r) for r in config.rules]
    sig = list(config.sigmas)
    d = images[0].numel()
    resolved = config.estimator_for(d)
    stored = {"model": model_id or state_dict_sha256(net), "data": tensor_sha256(images), "n": n,
              "seed": config.seed, "rules": rule_list, "sigmas": sig, "estimator": resolved,
              "probes": config.probes if resolved == "hutchinson" else None}
    inputs = (images, seeded_noise(config.seed, n, images.shape[1:]), one_hot(net, labels, n))
    unit_base = {k: v for k, v in stored.items() if k not in ("rules", "sigmas")}
    units: dict[tuple[str, float], dict] = {}
    work = [(r, s) for r in rule_list for s in sig]
    for r, s in tqdm(work, desc="complexity", unit="unit", disable=not progress):
        units[(r, s)] = cached(store, "complexity", unit_base | {"rule": r, "sigma": s},
                               lambda r=r, s=s: _unit(net, *inputs, r, s, resolved, config))
    baseline = next((r for r in rule_list if r in ("none", "const:1")), None)
    rows = _rows(rule_list, sig, units, baseline)
    summary = _summary(rows, sig, baseline, {"estimator": resolved, "input_dim": d, "n_images": n})
    return AnalysisResult(NAME, stored, rows, summary, _notes(config, resolved, d, n, baseline))


def _rows(rule_list: list[str], sig: list[float], units: dict, baseline: str | None) -> list[dict]:
    """One row per (rule, sigma): each norm's mean (with its interval for frobenius) and the paired ratio."""
    rows = []
    for r in rule_list:
        for s in sig:
            u = units[(r, s)]
            row = {"rule": r, "rho": _rho_of(r), "sigma": s}
            for k in ("frobenius", "spectral", "sum_grad"):
                if all(math.isnan(v) for v in u[k]):
                    row[k] = math.nan
                    continue
                iv = interval(u[k], k)
                row |= iv if k == "frobenius" else {k: iv[k]}
            if baseline is not None:
                b = units[(baseline, s)]["frobenius"]
                row |= interval([a / c for a, c in zip(u["frobenius"], b, strict=True)], "ratio_to_baseline")
            rows.append(row)
    return rows


def _summary(rows: list[dict], sig: list[float], baseline: str | None, summary: dict) -> dict:
    """``summary`` with, per sigma, the baseline norm and whether the norm decreases strictly in rho."""
    for s in sig:
        pts = sorted((row["rho"], row["frobenius"]) for row in rows if row["sigma"] == s and row["rho"] is not None)
        if baseline is not None:
            summary[f"frobenius_baseline_sigma={s:g}"] = next(row["frobenius"] for row in rows
                                                              if row["sigma"] == s and row["rule"] == baseline)
        if len(pts) >= 2:
            summary[f"decreasing_in_rho_sigma={s:g}"] = all(b[1] < a[1] for a, b in zip(pts, pts[1:], strict=False))
    return summary


def _notes(config: ComplexityConfig, resolved: str, d: int, n: int, baseline: str | None) -> list[str]:
    seed, probe_seed, probes = config.seed, config.probe_seed, config.probes
    est_text = {"exact": f"exact: the full {d} x {d} Jacobian from {d} vector-Jacobian products per image",
                "hutchinson": f"Hutchinson: ||J||_F^2 = E_v ||J^T v||^2 with {probes} Rademacher probes per image "
                              f"(probe seeds {probe_seed}..{probe_seed + n - 1}); sqrt of the unbiased estimate "
                              "of the square; spectral not estimated"}[resolved]
    return [
        "U = the preconditioned denoiser D(x, sigma) at fixed sigma; x = y + sigma n for real images y, n from "
        f"seeds {seed}..{seed + n - 1}; {n} images per (rule, sigma). Estimator: {est_text}.",
        "frobenius = ||dD/dx||_F (headline: the l2 norm of the flattened gradient), spectral = ||dD/dx||_2, "
        "sum_grad = ||(dD/dx)^T 1||_2 (autograd of the summed output). Seed 003 eq. (3) writes "
        "E_x ||autograd_x(U(x))||_2 without naming the matrix norm.",
        "Intervals: 95% Student-t over images; ratio_to_baseline is paired (same inputs) against "
        f"{baseline or '(no untouched rule given)'}.",
        "Paper: Table 1 EDM ImageNet-64 0.1219 (sigma 80), 0.9425 (sigma 5); distilled models larger; Fig. 3: "
        "the norm increases monotonically as rho decreases below 1.",
    ]
