"""Denoiser wrappers to the EDM convention ``D(x, sigma, **cond) -> x0_hat``.

Every wrapper publishes sigma (:func:`skiptune.core.sigma.publish_sigma`) around the network call, so
sigma-dependent Skip-Tuning rules see the current noise level whatever sampler is used (as a Python
number when the sampler's sigma is one value for the batch, see :func:`~skiptune.core.sigma.mark_uniform`;
nothing is read back from the device), and exposes
``sigma_min`` / ``sigma_max`` where the model defines them, and ``input_dtype`` (the dtype in which
the samplers should pass x).

- :class:`EDMDenoiser`: a module whose ``forward(x, sigma, class_labels=None, ...)`` already returns x0
  (EDM preconditioned nets).
- :class:`VPDenoiser`: discrete-time VP models (DDPM, LDM, diffusers) ``model(x_vp, t, **cond)``
  predicting eps or v, from their alphas_cumprod (REFERENCE.md Sec. 2; k-diffusion's
  ``DiscreteEpsDDPMDenoiser``): sigma_t = sqrt(1/abar_t - 1), x_vp = x / sqrt(1 + sigma^2),
  D = x - sigma eps; for v = alpha eps - sigma_vp x0 (Salimans & Ho 2022),
  D = x/(1 + sigma^2) - sigma/sqrt(1 + sigma^2) v.
- :class:`CFGDenoiser`: classifier-free guidance D = D_u + w (D_c - D_u) (Ho & Salimans 2022, eq. 6
  with w = 1 + their w): w = 1 is the conditional model, w = 0 the unconditional one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from skiptune.core.errors import InputError
from skiptune.core.sigma import mark_uniform, publish_sigma, uniform_value
from skiptune.sampling.grids import sigmas_from_alphas_cumprod


def _param_dtype(module: nn.Module, default: torch.dtype = torch.float32) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def _sigma_tensor(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma as a float64 tensor of shape [B] (a scalar is broadcast over the batch).

    When sigma is one value known on the host (a number, or a tensor the sampler marked), the result
    is marked with it (:func:`~skiptune.core.sigma.mark_uniform`), so that skip rules use that number
    instead of reading the tensor.
    """
    value = uniform_value(sigma)
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(x.shape[0])
    if s.shape[0] != x.shape[0]:
        raise InputError(f"sigma has {s.shape[0]} values for a batch of {x.shape[0]}")
    return s if value is None or uniform_value(s) == value else mark_uniform(s, value)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class EDMDenoiser(nn.Module):
    """Wrap a network that maps ``(x, sigma, class_labels=None, **kw)`` to x0 (EDM ``*Precond``).

    x is cast to the network's parameter dtype (``input_dtype``); sigma is passed as a float64 tensor
    [B] and published. ``sigma_min``/``sigma_max`` come from the network's attributes if it has them
    (EDMPrecond: 0 and inf, i.e. unbounded) unless given here.
    """

    def __init__(self, net: nn.Module, *, sigma_min: float | None = None, sigma_max: float | None = None,
                 autocast: torch.dtype | None = None):
        super().__init__()
        self.net = net
        self.sigma_min = float(sigma_min if sigma_min is not None else getattr(net, "sigma_min", 0.0))
        self.sigma_max = float(sigma_max if sigma_max is not None else getattr(net, "sigma_max", float("inf")))
        self.autocast = autocast  # mixed precision for the network call only (the sampler stays float64)

    @property
    def input_dtype(self) -> torch.dtype:
        return _param_dtype(self.net)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        s = _sigma_tensor(sigma, x)
        with publish_sigma(s):
            if self.autocast is None:
                return self.net(x.to(self.input_dtype), s, **cond)
            with torch.autocast(device_type=x.device.type, dtype=self.autocast):
                out = self.net(x.to(self.input_dtype), s, **cond)
            return out.to(self.input_dtype)


class VPDenoiser(nn.Module):
    """Wrap a discrete VP model ``model(x_vp, t, **cond)`` predicting eps (``"eps"``) or v (``"v"``).

    ``alphas_cumprod`` holds abar_t for t = 0..T-1. The timestep given to the model is the trained
    t whose log sigma is nearest to log sigma (``timesteps="nearest"``, int64) or the fractional t
    obtained by linear interpolation of log sigma_t (``"interp"``, float; k-diffusion's ``sigma_to_t``),
    clamped to [0, T-1]. The conversion uses the sampler's sigma itself (only t is rounded), in float64;
    only the network input is cast to the model's dtype. ``round_sigma`` gives the trained sigma for
    nearest rounding (use it to build grids on trained levels).
    """

    input_dtype = torch.float64

    def __init__(
        self,
        model: nn.Module,
        alphas_cumprod: torch.Tensor,
        *,
        prediction: Literal["eps", "v"] = "eps",
        timesteps: Literal["nearest", "interp"] = "nearest",
        model_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if prediction not in ("eps", "v"):
            raise InputError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        if timesteps not in ("nearest", "interp"):
            raise InputError(f"timesteps must be 'nearest' or 'interp', got {timesteps!r}")
        sig = sigmas_from_alphas_cumprod(alphas_cumprod)
        if not bool((sig[1:] > sig[:-1]).all()):
            raise InputError("alphas_cumprod must be strictly decreasing in t")
        self.model = model
        self.prediction = prediction
        self.timesteps = timesteps
        self.model_dtype = model_dtype
        self.register_buffer("sigmas", sig, persistent=False)
        self.register_buffer("log_sigmas", sig.log(), persistent=False)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Model timestep for each sigma (int64 for nearest, float64 for interp)."""
        log_s = torch.as_tensor(sigma, dtype=torch.float64, device=self.log_sigmas.device).log()
        ls = self.log_sigmas
        hi = torch.searchsorted(ls, log_s.contiguous()).clamp(1, ls.shape[0] - 1)
        lo = hi - 1
        if self.timesteps == "nearest":
            return torch.where((log_s - ls[lo]).abs() <= (ls[hi] - log_s).abs(), lo, hi)
        w = ((log_s - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1)
        return lo.to(torch.float64) + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sigma_to_t` (log-linear interpolation for fractional t)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=self.log_sigmas.device).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        w = t - lo
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1]).exp()

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The trained sigma nearest (in log) to ``sigma``."""
        idx = torch.as_tensor(sigma, dtype=torch.float64).log().sub(self.log_sigmas[:, None]).abs().argmin(0)
        return self.sigmas[idx].reshape(torch.as_tensor(sigma).shape)

    def call_model(self, x_vp: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        """The model's eps or v prediction; subclasses adapt foreign calling conventions here."""
        return self.model(x_vp, t, **cond)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        s = _sigma_tensor(sigma, x)
        x64 = x.to(torch.float64)
        c_in = _bcast(1 / (1 + s**2).sqrt(), x64)  # alpha_vp = 1/sqrt(1 + sigma^2)
        t = self.sigma_to_t(s)
        dtype = self.model_dtype or _param_dtype(self.model)
        if t.is_floating_point():
            t = t.to(dtype)
        with publish_sigma(s):
            out = self.call_model((x64 * c_in).to(dtype), t, **cond)
        out = out.to(torch.float64)
        sb = _bcast(s, x64)
        if self.prediction == "eps":
            return x64 - sb * out
        return x64 * c_in**2 - sb * c_in * out


class CFGDenoiser(nn.Module):
    """Classifier-free guidance: D = D(x, s, **uncond_cond) + scale (D(x, s, **cond) - D(x, s, **uncond_cond)).

    ``uncond`` overrides the conditioning keywords for the unconditional pass (e.g.
    ``{"class_labels": None}`` or a null label tensor). With ``batched=True`` both passes go through
    one call on the concatenated batch; every overridden value must then be a tensor with the batch
    dimension first (and the other cond values too), otherwise a ValueError is raised.
    """

    def __init__(self, denoiser: Any, scale: float, uncond: Mapping[str, Any], *, batched: bool = False):
        super().__init__()
        self.denoiser = denoiser
        self.scale = float(scale)
        self.uncond = dict(uncond)
        self.batched = batched
        if not self.uncond:
            raise InputError("uncond must override at least one conditioning keyword")

    @property
    def input_dtype(self) -> torch.dtype | None:
        from skiptune.sampling._core import denoiser_input_dtype

        return denoiser_input_dtype(self.denoiser)

    @property
    def sigma_min(self) -> float:
        return float(getattr(self.denoiser, "sigma_min", 0.0))

    @property
    def sigma_max(self) -> float:
        return float(getattr(self.denoiser, "sigma_max", float("inf")))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        ucond = {**cond, **self.uncond}
        if self.scale == 1.0:
            return self.denoiser(x, sigma, **cond)
        if not self.batched:
            d_c = self.denoiser(x, sigma, **cond)
            d_u = self.denoiser(x, sigma, **ucond)
        else:
            b = x.shape[0]
            both = {}
            for key in set(cond) | set(ucond):
                c, u = cond.get(key), ucond.get(key)
                if not (
                    isinstance(c, torch.Tensor) and isinstance(u, torch.Tensor) and c.shape[0] == b and u.shape[0] == b
                ):
                    raise InputError(f"batched CFG needs tensor conditioning with batch dim for {key!r}")
                both[key] = torch.cat([c, u])
            s = _sigma_tensor(sigma, x)
            value = uniform_value(s)
            s2 = torch.cat([s, s])
            d = self.denoiser(torch.cat([x, x]), s2 if value is None else mark_uniform(s2, value), **both)
            d_c, d_u = d[:b], d[b:]
        return d_u + self.scale * (d_c - d_u)
