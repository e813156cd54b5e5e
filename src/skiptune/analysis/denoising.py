"""Shared pieces of the analyses that probe the denoiser directly (``norms``, ``complexity``, ``dsm``, ``finetune``).

They all evaluate the preconditioned denoiser ``D(x, sigma)`` on noisy real images
``x = y + sigma n`` (seed 003, Sec. 3 and 5): this module turns their common options into tensors
(noise-level grids, images matched to the network, seeded noise, one-hot labels), checks the
settings of their config classes, attaches rules and per-site transforms through the network's
adapter, and summarises per-sample values with Student-t intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from skiptune.core.denoiser import DenoiserInfo
from skiptune.core.errors import InputError
from skiptune.core.stats import t_interval
from skiptune.sampling import EDMDenoiser, SeedNoise
from skiptune.skip import Identity, as_rule, skip_tuning

#: ln sigma ~ N(P_mean, P_std^2) of EDM training (Karras et al. 2022, Table 1)
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2


# -- noise levels ----------------------------------------------------------------------------------------------------

def parse_sigmas(text: str | Sequence[float]) -> list[float]:
    """A list of noise levels from its command-line form.

    - ``edm:N`` or ``edm:N:LO:HI``: the N levels of the EDM sampling grid (Karras et al. 2022, eq. 5,
      rho = 7) from HI (default 80) down to LO (default 0.002), without the final 0. ``edm:5`` gives
      the five levels of seed 003, Table 9 (80, 17.53, 2.515, 0.1698, 0.002).
    - ``lognormal:K`` or ``lognormal:K:PMEAN:PSTD``: the K quantiles at probabilities (k - 1/2)/K of
      the EDM training distribution ln sigma ~ N(-1.2, 1.2^2), largest first.
    - ``0.1,1,10``: explicit values.
    """
    if not isinstance(text, str):
        values = [float(v) for v in text]
    else:
        spec = text.strip()
        kind, _, rest = spec.partition(":")
        try:
            if kind == "edm":
                from skiptune.sampling.grids import make_sigmas

                parts = [float(p) for p in rest.split(":")] if rest else []
                if len(parts) not in (1, 3) or parts[0] != int(parts[0]) or parts[0] < 1:
                    raise ValueError
                lo, hi = (parts[1], parts[2]) if len(parts) == 3 else (0.002, 80.0)
                if not 0 < lo < hi:
                    raise ValueError
                n = int(parts[0])
                values = [hi] if n == 1 else [float(s) for s in make_sigmas("edm", n, lo, hi, append_zero=False)]
            elif kind == "lognormal":
                from scipy.stats import norm

                parts = [float(p) for p in rest.split(":")] if rest else []
                if len(parts) not in (1, 3) or parts[0] != int(parts[0]) or parts[0] < 1:
                    raise ValueError
                p_mean, p_std = (parts[1], parts[2]) if len(parts) == 3 else (EDM_P_MEAN, EDM_P_STD)
                k = int(parts[0])
                values = sorted((math.exp(p_mean + p_std * float(norm.ppf((j + 0.5) / k))) for j in range(k)),
                                reverse=True)
            else:
                values = [float(v) for v in spec.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"cannot read noise levels {text!r}: use edm:N[:LO:HI], lognormal:K[:PMEAN:PSTD] "
                             "or a comma-separated list such as 80,5,0.5") from None
    if not values:
        raise InputError("no noise levels given")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise InputError(f"noise levels must be finite and > 0, got {bad}")
    return [float(v) for v in values]


def edm_lognormal_sigmas(n: int, generator: torch.Generator, p_mean: float = EDM_P_MEAN,
                         p_std: float = EDM_P_STD) -> torch.Tensor:
    """``sigma = exp(P_mean + P_std z)``, z ~ N(0, 1): the EDM training noise levels, shape ``[n]``."""
    return (p_mean + p_std * torch.randn([n], generator=generator, dtype=torch.float64)).exp()


# -- settings --------------------------------------------------------------------------------------------------------
# The checks behind the config classes of the analyses (NormsConfig, ComplexityConfig, DsmConfig): each returns the
# setting in its canonical, immutable form, or raises InputError naming the setting and what to give instead.

def setting_sigmas(value: str | Sequence[float]) -> tuple[float, ...]:
    """The noise levels of a :func:`parse_sigmas` spec (``edm:10``, ``80,5``) or of a sequence, as a tuple."""
    if not isinstance(value, str):
        try:
            value = [float(v) for v in value]
        except (TypeError, ValueError):
            raise InputError(f"sigmas must be a spec such as 'edm:10' or '80,5,0.5', or a sequence of numbers; "
                             f"got {value!r}") from None
    return tuple(parse_sigmas(value))


def setting_rule(value: Any) -> str:
    """The canonical string of one rule; whether it fits a network's skip sites is checked by :func:`check_rule`."""
    return str(as_rule(value))


# -- data ------------------------------------------------------------------------------------------------------------

def images_for(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images`` (float [N, C, H, W] in [-1, 1]) checked against the network: float32, gray repeated to
    RGB or RGB averaged to gray when the network wants the other; ValueError otherwise."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise InputError("images must be a float tensor [N, C, H, W] in [-1, 1]")
    if images.shape[0] == 0:
        raise InputError("no images: the data set or the requested count is empty")
    info = DenoiserInfo.of(net)
    res, ch = info.img_resolution, info.img_channels
    if tuple(images.shape[2:]) != (res, res):
        raise InputError(f"images are {images.shape[2]}x{images.shape[3]} but the network works at {res}x{res}: "
                         "load the data at the network's resolution")
    x = images.to(torch.float32)
    if x.shape[1] != ch:
        if x.shape[1] == 1 and ch == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        elif x.shape[1] == 3 and ch == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise InputError(f"images have {x.shape[1]} channels but the network {ch}")
    return x


def check_image_count(n: int) -> int:
    """``n`` when there are at least 2 images (the intervals are over images)."""
    if n < 2:
        raise InputError(f"need at least 2 images (intervals are over images), got {n}: give more images")
    return n


def one_hot(net: nn.Module, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """One-hot class labels for a class-conditional network (None for an unconditional one)."""
    dim = DenoiserInfo.of(net).label_dim
    if not dim:
        return None
    if labels is None:
        raise InputError(f"the network is class-conditional ({dim} classes): give the images' labels")
    labels = torch.as_tensor(labels).reshape(-1).long()
    if labels.numel() < n:
        raise InputError(f"{labels.numel()} labels for {n} images")
    labels = labels[:n]
    if int(labels.min()) < 0 or int(labels.max()) >= dim:
        raise InputError(f"labels must lie in 0..{dim - 1} for this network")
    return torch.eye(dim)[labels]


def seeded_noise(seed: int, n: int, shape: Sequence[int]) -> torch.Tensor:
    """Unit normal noise ``[n, *shape]``; row j comes from its own generator seeded ``seed + j``, so a
    sample's noise does not depend on how many samples are drawn."""
    return SeedNoise(list(range(seed, seed + n))).randn(tuple(shape))


# -- running the denoiser ----------------------------------------------------------------------------------------------

def denoise(net: nn.Module, x: torch.Tensor, sigma: float | torch.Tensor,
            labels: torch.Tensor | None = None) -> torch.Tensor:
    """``D(x, sigma)`` through :class:`~skiptune.sampling.EDMDenoiser` (which publishes sigma to the rules)."""
    extra = {"class_labels": labels} if labels is not None else {}
    if not isinstance(sigma, torch.Tensor):
        sigma = torch.full((x.shape[0],), float(sigma), dtype=torch.float64)
    return EDMDenoiser(net)(x, sigma, **extra).to(torch.float32)


def attached(net: nn.Module, rule: Any, mode: str = "concat"):
    """Context manager attaching ``rule`` (nothing for the untouched rule, so any denoiser works)."""
    rule = as_rule(rule)
    return nullcontext() if isinstance(rule, Identity) else skip_tuning(net, rule, mode=mode)


def check_rule(net: nn.Module, rule: Any) -> str:
    """The canonical string of ``rule``, after checking that it fits the network's skip sites."""
    from skiptune.skip import skip_sites

    r = as_rule(rule)
    if not isinstance(r, Identity):
        r.check(len(skip_sites(net)))
    return str(r)


def attach_joins(net: nn.Module, fn: Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 ) -> list[RemovableHandle]:
    """Hook every skip site: its join inputs ``(u_i, d_i)`` become ``fn(i, u_i, d_i)`` (i = 0 innermost).

    Goes through the network's adapter (:meth:`~skiptune.adapters.base.Adapter.attach_join`), after any
    rule already attached, so ``d_i`` arrives scaled by that rule's rho. Remove the handles when done.
    """
    from skiptune.adapters import find_adapter

    adapter = find_adapter(net)
    handles: list[RemovableHandle] = []
    try:
        for site in adapter.sites(net):
            handles += adapter.attach_join(net, site, lambda u, d, i=site.index: fn(i, u, d))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


# -- statistics --------------------------------------------------------------------------------------------------------

def interval(values: Sequence[float], name: str) -> dict[str, float]:
    """``{name: mean, name_ci_low, name_ci_high}``: mean and 95% Student-t interval over samples."""
    est = t_interval(list(values))
    return {name: est.mean, f"{name}_ci_low": est.ci_low, f"{name}_ci_high": est.ci_high}


def batches(n: int, size: int):
    """``range`` slices of ``0..n`` of at most ``size``."""
    if size < 1:
        raise InputError("batch size must be >= 1")
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))
