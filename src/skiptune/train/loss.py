"""The EDM training loss (Karras et al. 2022, "Elucidating the Design Space...", Sec. 5 and Table 1).

For clean images y, noise n ~ N(0, I) and a noise level drawn log-normally,
``ln sigma ~ N(P_mean, P_std^2)`` (defaults -1.2 and 1.2), the per-image loss is

    L(y, sigma, n) = lambda(sigma) * || D(y + sigma n, sigma) - y ||_2^2,
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2,

where D is the preconditioned denoiser. lambda cancels c_out(sigma)^2 of the EDM preconditioning, so
the raw network's target has unit variance at every sigma; for an untrained network whose raw
output is 0 (D = c_skip x) and data with per-pixel second moment m2, the expected per-pixel loss is
``(sigma^2 m2 + sigma_data^4) / (sigma_data^2 (sigma^2 + sigma_data^2))``, exactly 1 when m2 = sigma_data^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from skiptune.core.errors import InputError


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss(net: nn.Module, images: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
             class_labels: torch.Tensor | None = None, sigma_data: float | None = None) -> torch.Tensor:
    """Per-element weighted squared error ``lambda(sigma) (D(y + sigma n, sigma) - y)^2``, shape of ``images``.

    ``sigma`` has one value per image (shape ``[N]`` or ``[N, 1, 1, 1]``); ``noise`` is the unit-variance
    n; ``sigma_data`` defaults to ``net.sigma_data``. Summing over C, H, W gives the per-image L above.
    """
    sd = float(net.sigma_data if sigma_data is None else sigma_data)
    sigma = sigma.reshape(-1, 1, 1, 1).to(images.dtype)
    denoised = net(images + sigma * noise, sigma, class_labels)
    return edm_weight(sigma, sd) * (denoised - images) ** 2


@dataclass(frozen=True)
class EDMLoss:
    """Samples the EDM noise levels and noise, then evaluates :func:`edm_loss`.

    ``label_dropout`` replaces each image's one-hot label by the zero vector (the network's
    unconditional input) with that probability, from the same generator, so a step is a pure
    function of the generator's state.
    """

    P_mean: float = -1.2
    P_std: float = 1.2
    label_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.P_std > 0:
            raise InputError(f"P_std must be > 0, got {self.P_std}")
        if not 0 <= self.label_dropout <= 1:
            raise InputError(f"label_dropout must be in [0, 1], got {self.label_dropout}")

    def sample_sigma(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
        """``sigma = exp(P_mean + P_std z)``, z ~ N(0, 1), shape ``[n]``."""
        z = torch.randn([n], generator=generator, device=device)
        return (self.P_mean + self.P_std * z).exp()

    def __call__(self, net: nn.Module, images: torch.Tensor, one_hot: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-element loss for one batch (draws sigma, then n, then the label-dropout mask)."""
        n = images.shape[0]
        sigma = self.sample_sigma(n, generator, images.device)
        noise = torch.randn(images.shape, generator=generator, device=images.device)
        if one_hot is not None and self.label_dropout > 0:
            keep = torch.rand([n, 1], generator=generator, device=images.device) >= self.label_dropout
            one_hot = one_hot * keep.to(one_hot.dtype)
        return edm_loss(net, images, sigma, noise, one_hot)
