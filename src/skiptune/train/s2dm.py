"""Discrete-time DDPM training and the S²-DM skip-step loss (seed 004; REFERENCE.md Sec. 5).

Setting (Ho et al. 2020): T = 1000 steps, betas linear in [1e-4, 0.02], ``abar_t = prod_{s<=t} (1 - beta_s)``
for the 0-based timesteps t = 0..T-1 (float64, :func:`skiptune.sampling.alphas_cumprod`; the network,
:class:`~skiptune.nets.DDPMPrecond`, owns the schedule so that training and sampling use the same one).
For clean images x0, timesteps t and noise e1 ~ N(0, I):

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) e1,        eps_hat = eps_theta(x_t, t),
    L0  = mean((e1 - eps_hat)^2)                                      (DDPM's L_simple),

the mean running over the pixels of one image. S²-DM (seed 004) trains on ``L = tau L0 + (1 - tau) L_skip``
(its TL;DR and abstract; tau = 0.99), with, as the official code defines it,

    alpha_skip = abar_t / abar_{t-k} = prod_{s=t-k+1}^{t} (1 - beta_s),
    L_skip     = mean((e2 - sqrt((1 - alpha_skip) / alpha_skip) eps_hat)^2),   e2 ~ N(0, I) drawn afresh,

for t >= k, and ``L = L0`` for t < k (where t - k is not a timestep). Both terms use the same eps_hat.

The skip span k (``skip_span``, ``--skip-span``). Here k is the number of diffusion steps between
the two abar indices: alpha_skip is the product of exactly k factors (1 - beta_s), the signal kept by
a jump t -> t-k, as a DDIM sampler with stride k takes it (100 uniform steps of T = 1000: k = 10). The
official code (kingkingofall/skip-step-diffusion, ``functions/losses.py``) has ``skip = 9`` and forms
``abar[t] / abar[t - skip]`` with the same 0-based indices, so its k is 9, yet the paper calls that
model S²-DM^10 (its ``skip = 1`` is S²-DM^2, ``skip = 49`` S²-DM^50): the paper's label is k + 1. To
reproduce the paper's S²-DM^m as its code trains it, use ``skip_span = m - 1``; ``skip_span = 10``
matches a stride-10 DDIM sampler.

What L_skip does, in expectation. With c^2 = (1 - alpha_skip)/alpha_skip and e2 independent of
eps_hat, ``E_e2[L_skip] = 1 + c^2 mean(eps_hat^2)``, so its expected gradient is that of
``c^2 mean(eps_hat^2)``: a penalty pulling eps_hat towards 0, stronger at large t. The pointwise
minimiser of the expected objective is ``eps_hat = tau E[e1 | x_t] / (tau + (1 - tau) c^2)``, the DDPM
optimum shrunk by that factor (for k = 10 at t = T-1: c^2 ~ 0.22, a shrink of about 0.2%).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from skiptune.core.errors import InputError

DISCRETE_OBJECTIVES = ("ddpm", "s2dm")

EpsModel = Callable[..., torch.Tensor]


def _check_timesteps(t: torch.Tensor, num_timesteps: int) -> None:
    if t.is_floating_point() or t.ndim != 1:
        raise InputError("timesteps must be a 1-D integer tensor (one per image)")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_timesteps):
        raise InputError(f"timesteps must lie in 0..{num_timesteps - 1}, got {int(t.min())}..{int(t.max())}")


def check_skip_span(skip_span: int, num_timesteps: int) -> None:
    """ValueError unless ``1 <= skip_span < num_timesteps`` (an integer)."""
    if isinstance(skip_span, bool) or int(skip_span) != skip_span or not 1 <= skip_span < num_timesteps:
        raise InputError(f"skip_span must be an integer in 1..{num_timesteps - 1} (abar_(t-k) must be a trained "
                         f"timestep for some t), got {skip_span}")


def alpha_skip(alphas_cumprod: torch.Tensor, t: torch.Tensor, skip_span: int) -> torch.Tensor:
    """``abar_t / abar_{t-k}`` (float64, shape of ``t``); for t < k the index t - k is clamped to 0 (unused)."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    check_skip_span(skip_span, abar.shape[0])
    t = torch.as_tensor(t).to(abar.device)
    return abar[t] / abar[(t - int(skip_span)).clamp(min=0)]


def antithetic_timesteps(n: int, num_timesteps: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` timesteps in antithetic pairs (t, T-1-t), t uniform on 0..T-1 (DDPM/DDIM training), int64.

    Draws ``n // 2 + 1`` uniform timesteps and appends their mirror images, keeping the first ``n``.
    """
    if n < 1:
        raise InputError(f"need n >= 1 timesteps, got {n}")
    half = torch.randint(0, num_timesteps, (n // 2 + 1,), generator=generator, device=device)
    return torch.cat([half, num_timesteps - 1 - half])[:n]


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _predict(eps_model: EpsModel, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             alphas_cumprod: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    _check_timesteps(t, abar.shape[0])
    if noise.shape != x0.shape or t.shape[0] != x0.shape[0]:
        raise InputError(f"x0 {tuple(x0.shape)}, noise {tuple(noise.shape)} and timesteps {tuple(t.shape)} disagree")
    a = abar.to(t.device)[t]
    x_t = _bcast(a.sqrt(), x0) * x0 + _bcast((1 - a).sqrt(), x0) * noise
    return eps_model(x_t, t) if class_labels is None else eps_model(x_t, t, class_labels)


def _pixel_mean(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).mean(dim=1)


def ddpm_loss(eps_model: EpsModel, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
              alphas_cumprod: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image L0 = mean over pixels of ``(e1 - eps_theta(x_t, t))^2``, shape [N].

    ``eps_model(x_t, t[, class_labels])`` predicts the noise at integer timesteps ``t`` (int64 [N]);
    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (Ho et al. 2020, L_simple; seed 004's L0).
    """
    eps_hat = _predict(eps_model, x0, t, noise, alphas_cumprod, class_labels)
    return _pixel_mean((noise - eps_hat) ** 2)


def s2dm_loss(eps_model: EpsModel, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, skip_noise: torch.Tensor,
              alphas_cumprod: torch.Tensor, skip_span: int, tau: float = 0.99,
              class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image S²-DM loss, shape [N]: ``tau L0 + (1 - tau) L_skip`` where t >= k, ``L0`` where t < k.

    ``L_skip = mean((skip_noise - sqrt((1 - alpha_skip)/alpha_skip) eps_hat)^2)`` with
    ``alpha_skip = abar_t / abar_{t-k}``, k = ``skip_span`` (the convention of the module docstring);
    ``skip_noise`` is e2, a draw independent of ``noise``. One network evaluation serves both terms.
    With ``tau = 1`` the result equals :func:`ddpm_loss` exactly.
    """
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    check_skip_span(skip_span, abar.shape[0])
    if not 0 <= tau <= 1:
        raise InputError(f"tau must lie in [0, 1], got {tau}")
    if skip_noise.shape != x0.shape:
        raise InputError(f"skip_noise {tuple(skip_noise.shape)} must have the shape of x0 {tuple(x0.shape)}")
    eps_hat = _predict(eps_model, x0, t, noise, abar, class_labels)
    l0 = _pixel_mean((noise - eps_hat) ** 2)
    a_skip = alpha_skip(abar.to(t.device), t, skip_span)
    c = _bcast(((1 - a_skip) / a_skip).sqrt(), eps_hat)
    l_skip = _pixel_mean((skip_noise - c * eps_hat) ** 2)
    mixed = tau * l0 + (1 - tau) * l_skip
    return torch.where(t.to(l0.device) >= skip_span, mixed, l0)


@dataclass(frozen=True)
class DiscreteLoss:
    """Draws a batch's timesteps and noise, then evaluates :func:`ddpm_loss` or :func:`s2dm_loss`.

    From the generator, in this order: antithetic timesteps, e1, e2, then the label-dropout mask
    (as :class:`~skiptune.train.loss.EDMLoss`). Both objectives draw e2, so a DDPM run and an S²-DM run
    with the same seed see the same images, timesteps and e1 at every step, and S²-DM with tau = 1
    trains bit-identically to DDPM. The network must be a discrete eps model with ``eps(x_t, t,
    class_labels)`` and ``alphas_cumprod`` (:class:`~skiptune.nets.DDPMPrecond`).
    """

    objective: Literal["ddpm", "s2dm"] = "s2dm"
    skip_span: int = 10
    tau: float = 0.99
    label_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.objective not in DISCRETE_OBJECTIVES:
            raise InputError(f"objective must be one of {', '.join(DISCRETE_OBJECTIVES)}, got {self.objective!r}")
        if not 0 <= self.tau <= 1:
            raise InputError(f"tau must lie in [0, 1], got {self.tau}")
        if not 0 <= self.label_dropout <= 1:
            raise InputError(f"label_dropout must be in [0, 1], got {self.label_dropout}")

    def __call__(self, net: nn.Module, images: torch.Tensor, one_hot: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-image loss [N] (a per-pixel mean, so ``sum / N`` is the batch objective)."""
        abar = getattr(net, "alphas_cumprod", None)
        if abar is None or not callable(getattr(net, "eps", None)):
            raise InputError(f"the {self.objective} objective needs a discrete eps-prediction network "
                             f"(DDPMPrecond), not {type(net).__name__}")
        n, device = images.shape[0], images.device
        t = antithetic_timesteps(n, abar.shape[0], generator, device)
        e1 = torch.randn(images.shape, generator=generator, device=device)
        e2 = torch.randn(images.shape, generator=generator, device=device)
        if one_hot is not None and self.label_dropout > 0:
            keep = torch.rand([n, 1], generator=generator, device=device) >= self.label_dropout
            one_hot = one_hot * keep.to(one_hot.dtype)
        if self.objective == "ddpm":
            return ddpm_loss(net.eps, images, t, e1, abar, one_hot)
        return s2dm_loss(net.eps, images, t, e1, e2, abar, self.skip_span, self.tau, one_hot)
