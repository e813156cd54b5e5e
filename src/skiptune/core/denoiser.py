"""The denoiser interface every network meets at: ``D(x, sigma, class_labels=None) -> x0`` (EDM sigma convention).

A network usable with skiptune's samplers is an ``nn.Module`` called as ``net(x, sigma, class_labels)``
that says what it generates through a few attributes. :class:`DenoiserInfo` reads them in one place,
with the documented defaults, so no caller guesses:

=====================  =========================================================  ======================
attribute              meaning                                                    when absent
=====================  =========================================================  ======================
``img_channels``       channels of x                                              required
``img_resolution``     height = width of x                                        required
``label_dim``          number of classes (0: unconditional)                       0
``sigma_min/max``      the noise range it was trained on                          0 and inf (unbounded)
``sigma_data``         std of the data (EDM preconditioning)                      0.5
``alphas_cumprod``     the trained levels of a discrete-time model                None (continuous)
``null_label``         ``class_labels=None`` is a trained "no label" class, so    False
                       classifier-free guidance applies (U-ViT's class 1000)
=====================  =========================================================  ======================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from skiptune.core.errors import InputError


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma, class_labels=None) -> x0`` with the attributes of :class:`DenoiserInfo`."""

    img_channels: int
    img_resolution: int

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class DenoiserInfo:
    """What a denoiser generates and on which noise levels (see the module doc for the defaults)."""

    img_channels: int
    img_resolution: int
    label_dim: int = 0
    sigma_min: float = 0.0
    sigma_max: float = math.inf
    sigma_data: float = 0.5
    alphas_cumprod: torch.Tensor | None = None
    null_label: bool = False

    @classmethod
    def of(cls, net: Any) -> DenoiserInfo:
        """The interface of ``net``; InputError naming the missing attribute if it is not a denoiser."""
        missing = [a for a in ("img_channels", "img_resolution") if getattr(net, a, None) is None]
        if missing:
            raise InputError(f"a {type(net).__name__} is not a skiptune denoiser: it has no {', '.join(missing)}; "
                             "load models with skiptune.load_model, or wrap them (skiptune.sampling.VPDenoiser)")

        def number(name: str, default: float) -> float:
            value = getattr(net, name, None)
            return default if value is None else float(value)

        return cls(img_channels=int(net.img_channels), img_resolution=int(net.img_resolution),
                   label_dim=int(getattr(net, "label_dim", 0) or 0), sigma_min=number("sigma_min", 0.0),
                   sigma_max=number("sigma_max", math.inf), sigma_data=number("sigma_data", 0.5),
                   alphas_cumprod=getattr(net, "alphas_cumprod", None),
                   null_label=bool(getattr(net, "null_label", False)))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample."""
        return self.img_channels, self.img_resolution, self.img_resolution
