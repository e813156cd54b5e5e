"""Preconditioned denoisers ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` (EDM, Table 1).

Each wrapper holds the raw UNet as ``self.model`` (the EDM checkpoint layout) and publishes sigma
to the Skip-Tuning rules (:func:`skiptune.skip.sigma.publish_sigma`) around every network call, so
sigma-dependent rules work whatever sampler calls the denoiser.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from skiptune.nets.unets import DhariwalUNet, SongUNet
from skiptune.skip.sigma import publish_sigma

UNET_CLASSES: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


def _make_unet(model_type: str, **kwargs) -> nn.Module:
    if model_type not in UNET_CLASSES:
        raise ValueError(f"unknown model_type {model_type!r}; known: {sorted(UNET_CLASSES)}")
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

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, **model_kwargs) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
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


PRECOND_CLASSES: dict[str, type[_Precond]] = {
    "EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond, "VEPrecond": VEPrecond, "iDDPMPrecond": iDDPMPrecond,
}
