"""Preconditioned denoisers ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` (EDM, Table 1).

Each wrapper holds the raw UNet as ``self.model`` (the EDM checkpoint layout) and publishes sigma
to the Skip-Tuning rules (:func:`skiptune.core.sigma.publish_sigma`) around every network call, so
sigma-dependent rules work whatever sampler calls the denoiser.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from skiptune.core.errors import InputError
from skiptune.core.schedules import alphas_cumprod, sigmas_from_alphas_cumprod
from skiptune.core.sigma import publish_sigma
from skiptune.nets.unets import DhariwalUNet, SongUNet

UNET_CLASSES: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


def _make_unet(model_type: str, **kwargs) -> nn.Module:
    if model_type not in UNET_CLASSES:
        raise InputError(f"unknown model_type {model_type!r}; known: {sorted(UNET_CLASSES)}")
    return UNET_CLASSES[model_type](**kwargs)


class _Precond(nn.Module):
    """Shared forward pass; subclasses define the coefficients."""

    out_channel_factor = 1

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool,
                 model_type: str, model_kwargs: dict):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.model = _make_unet(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                out_channels=img_channels * self.out_channel_factor, label_dim=label_dim,
                                **model_kwargs)

    def coefficients(self, sigma: torch.Tensor) -> tuple:
        """``(c_skip, c_out, c_in, c_noise)`` for sigma of shape [N, 1, 1, 1] (float32)."""
        raise NotImplementedError

    def _labels(self, class_labels: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        if self.label_dim == 0:
            return None
        if class_labels is None:
            return torch.zeros([1, self.label_dim], device=device)
        return class_labels.to(torch.float32).reshape(-1, self.label_dim)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, **model_kwargs) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        class_labels = self._labels(class_labels, x.device)
        use_half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if use_half else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        with publish_sigma(sigma.flatten()):
            f_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * f_x[:, : self.img_channels].to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class EDMPrecond(_Precond):
    """EDM preconditioning: c_skip = s_d^2/(s^2+s_d^2), c_out = s s_d/sqrt(s^2+s_d^2),
    c_in = 1/sqrt(s^2+s_d^2), c_noise = ln(s)/4."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data

    def coefficients(self, sigma):
        sd = self.sigma_data
        denom = (sigma**2 + sd**2).sqrt()
        return sd**2 / (sigma**2 + sd**2), sigma * sd / denom, 1 / denom, sigma.log() / 4


class VPPrecond(_Precond):
    """Variance-preserving preconditioning (Song et al. 2021): sigma(t) = sqrt(exp(beta_d t^2/2 +
    beta_min t) - 1), c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2+1), c_noise = (M-1) t(sigma)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Precond):
    """Variance-exploding preconditioning: c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma/2)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100, model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def coefficients(self, sigma):
        return 1, sigma, 1, (0.5 * sigma).log()


class iDDPMPrecond(_Precond):  # noqa: N801 (checkpoint class name)
    """Improved-DDPM preconditioning (Nichol & Dhariwal 2021) over a cosine schedule of M steps.

    The network predicts eps and a variance (2x channels; only eps is used). Sigma is rounded to the
    nearest of the M+1 trained levels ``u``; c_noise is its discrete timestep M-1-j.
    """

    out_channel_factor = 2

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 C_1: float = 0.001, C_2: float = 0.008, M: int = 1000, model_type: str = "DhariwalUNet",
                 **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        u = torch.zeros(M + 1)
        for j in range(M, 0, -1):
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer("u", u)
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])

    def alpha_bar(self, j):
        j = torch.as_tensor(j)
        return (0.5 * math.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def _nearest_index(self, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(self.u.device).to(torch.float32).reshape(-1, 1)
        return (s - self.u.reshape(1, -1)).abs().argmin(dim=1)

    def round_sigma(self, sigma, return_index: bool = False):
        sigma = torch.as_tensor(sigma)
        index = self._nearest_index(sigma)
        result = index if return_index else self.u[index].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

    def coefficients(self, sigma):
        c_noise = self.M - 1 - self._nearest_index(sigma).to(torch.float32).to(sigma.device)
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise


class DDPMPrecond(_Precond):
    """Discrete-time VP eps-prediction (DDPM, Ho et al. 2020) over ``M`` steps of linear betas.

    ``alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)``, t = 0..M-1, betas linear in
    [``beta_start``, ``beta_end``] (float64 buffers, rebuilt from the kwargs, not stored in checkpoints);
    the trained noise levels are ``sigmas[t] = sqrt(1/abar_t - 1)``. As a denoiser (REFERENCE.md Sec. 2):
    c_skip = 1, c_out = -sigma, c_in = 1/sqrt(1 + sigma^2) (so ``c_in x`` is the DDPM state
    x_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps), and c_noise = t, the trained timestep whose log sigma
    is nearest to log sigma (the rule of :class:`~skiptune.sampling.VPDenoiser` with
    ``timesteps='nearest'``). Training calls :meth:`eps` with integer timesteps directly.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_start: float = 1e-4, beta_end: float = 0.02, M: int = 1000, model_type: str = "SongUNet",
                 **model_kwargs):
        if not (0 < beta_start <= beta_end < 1 and int(M) == M and M >= 2):
            raise InputError(f"need 0 < beta_start <= beta_end < 1 and an integer M >= 2, got {beta_start}, "
                             f"{beta_end}, {M}")
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.M = int(M)
        abar = alphas_cumprod(self.M, "linear", beta_start, beta_end)
        sigmas = sigmas_from_alphas_cumprod(abar)
        self.register_buffer("alphas_cumprod", abar, persistent=False)
        self.register_buffer("sigmas", sigmas, persistent=False)
        self.register_buffer("log_sigmas", sigmas.log(), persistent=False)
        self.sigma_min = float(sigmas[0])
        self.sigma_max = float(sigmas[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The trained timestep nearest to each sigma in log space (int64, same shape as ``sigma``)."""
        log_s = torch.as_tensor(sigma).to(device=self.log_sigmas.device, dtype=torch.float64).log()
        ls = self.log_sigmas
        hi = torch.searchsorted(ls, log_s.reshape(-1).contiguous()).clamp(1, ls.shape[0] - 1)
        lo = hi - 1
        flat = log_s.reshape(-1)
        t = torch.where((flat - ls[lo]).abs() <= (ls[hi] - flat).abs(), lo, hi)
        return t.reshape(log_s.shape)

    def round_sigma(self, sigma, return_index: bool = False):
        sigma = torch.as_tensor(sigma)
        t = self.timestep(sigma)
        return (t if return_index else self.sigmas[t].to(sigma.dtype)).to(sigma.device)

    def coefficients(self, sigma):
        c_noise = self.timestep(sigma).to(device=sigma.device, dtype=torch.float32)
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
            **model_kwargs) -> torch.Tensor:
        """The network's noise prediction eps_hat(x_t, t) at integer timesteps ``t`` (shape [N]).

        ``x_t`` is the DDPM state; sigma_t is published for Skip-Tuning rules. Equals
        ``(c_in x - D(x, sigma_t)) / sigma_t`` for ``x = x_t / c_in`` up to rounding.
        """
        t = torch.as_tensor(t, device=x_t.device).reshape(-1)
        if t.is_floating_point() or bool(((t < 0) | (t >= self.M)).any()):
            raise InputError(f"timesteps must be integers in 0..{self.M - 1}")
        with publish_sigma(self.sigmas.to(x_t.device)[t]):
            out = self.model(x_t.to(torch.float32), t.to(torch.float32), class_labels=self._labels(class_labels,
                             x_t.device), **model_kwargs)
        return out[:, : self.img_channels].to(torch.float32)


PRECOND_CLASSES: dict[str, type[_Precond]] = {
    "EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond, "VEPrecond": VEPrecond, "iDDPMPrecond": iDDPMPrecond,
    "DDPMPrecond": DDPMPrecond,
}
