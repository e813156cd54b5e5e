"""Where the skips live: the adapter interface between Skip-Tuning and an architecture.

An adapter finds a network's skip sites (ordered innermost -> outermost) and attaches forward
pre-hooks that scale the skip part of a join by the current rho. It never replaces a forward
method; every hook is a ``torch.utils.hooks.RemovableHandle``.

Hooks never read a tensor's value on the host (``bool()``, ``float()``, ``.item()``, ``.cpu()``):
on a GPU each such read waits for all queued work. rho is either a Python number (then rho = 1
leaves the tensors untouched) or a tensor, which is multiplied in without being looked at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from skiptune.core.errors import InputError

#: current rho for a site: a Python number, or a tensor (0-d, or 1-D with one value per sample)
ScaleFn = Callable[[], "float | torch.Tensor"]
#: a transform of one join's two inputs, ``(u, d) -> (u', d')``: u the decoder tensor, d the encoder skip
JoinFn = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]

MODES = ("concat", "residual", "norm")
MODE_HELP = {
    "concat": "scale the encoder skip d_i before it is concatenated (seed 003, Def. 3.1)",
    "residual": "scale the skip channels only in the input of the block's inner residual shortcut "
                "(seed 003, App. C, the 'orig' variant)",
    "norm": "scale the skip channels only in the input of the block's first GroupNorm "
            "(seed 003, App. C, the 'norm0' variant)",
}


@dataclass(frozen=True)
class SkipSite:
    """One encoder-to-decoder join. ``index`` 0 is the innermost (lowest resolution, first popped)."""

    index: int
    name: str
    resolution: int
    skip_channels: int
    main_channels: int


class Adapter:
    """Base adapter; subclasses implement :meth:`matches`, :meth:`sites` and :meth:`attach`."""

    name = "base"
    modes: tuple[str, ...] = ("concat",)

    @classmethod
    def matches(cls, net: nn.Module) -> bool:
        raise NotImplementedError

    def sites(self, net: nn.Module) -> list[SkipSite]:
        raise NotImplementedError

    def attach(self, net: nn.Module, site: SkipSite, mode: str, scale: ScaleFn) -> list[RemovableHandle]:
        raise NotImplementedError

    def stages(self, net: nn.Module) -> list[int]:
        """Decoder stage of each site, 0 = innermost. Default: the rank of the site's resolution, lowest first."""
        sites = self.sites(net)
        order = sorted({s.resolution for s in sites})
        return [order.index(s.resolution) for s in sites]

    def attach_join(self, net: nn.Module, site: SkipSite, fn: JoinFn) -> list[RemovableHandle]:
        """Hook that replaces the join's inputs ``(u, d)`` by ``fn(u, d)`` (used by FreeU)."""
        raise InputError(f"{self.name} does not support feature transforms at its joins (FreeU); "
                         "only Skip-Tuning rules apply to it")

    def attach_sigma(self, net: nn.Module) -> list[RemovableHandle]:
        """Network-level hooks that publish sigma when a caller runs the bare network without publishing it
        (e.g. a foreign pipeline passing a timestep). Default: none; the preconditioner publishes it."""
        return []

    def staged(self, net: nn.Module, kind: str) -> nn.Module:
        """The module whose forward runs in stages (:mod:`skiptune.nets.staged`) for a cache policy of ``kind``
        (``encoder`` or ``deep``); an InputError when this architecture cannot run that policy."""
        raise InputError(f"{self.name} cannot run feature-cache policies (its forward has no stages to skip); "
                         "drop --cache for this model")

    def sigma_argument(self, net: nn.Module) -> bool:
        """Whether ``net`` is called as ``net(x, sigma, ...)`` with sigma the noise level itself (EDM's
        convention, our preconditioners), so that the sigma of a call can be read from its arguments.
        Default: False (bare UNets take c_noise or a timestep)."""
        return False


def scale_tensor(x: torch.Tensor, rho: float | torch.Tensor) -> torch.Tensor:
    """``rho * x`` with rho a number, a 0-d tensor, or one value per sample (in x's dtype, on x's device)."""
    if isinstance(rho, torch.Tensor):
        rho = rho.to(device=x.device, dtype=x.dtype)
        if rho.dim() > 0:
            rho = rho.reshape(-1, *([1] * (x.dim() - 1)))
    return x * rho


def scale_channels(x: torch.Tensor, start: int, rho: float | torch.Tensor) -> torch.Tensor:
    """x with channels ``start:`` (dim 1) multiplied by rho; the rest unchanged (new tensor)."""
    return torch.cat([x[:, :start], scale_tensor(x[:, start:], rho)], dim=1)


def unwrap(net: nn.Module, cls: type[nn.Module]) -> nn.Module | None:
    """``net`` itself or the network its preconditioner wraps (``net.model``), if it is a ``cls``."""
    if isinstance(net, cls):
        return net
    inner = getattr(net, "model", None)
    return inner if isinstance(inner, cls) else None


def hook_skip_channels(target: nn.Module, start: int, scale: ScaleFn) -> list[RemovableHandle]:
    """A forward pre-hook on ``target`` scaling channels ``start:`` of its first input by the current rho
    (the residual and norm modes: only that one consumer of the concatenation sees the scaled skip)."""

    def channel_hook(module, args):
        rho = scale()
        if is_identity(rho):
            return None
        return (scale_channels(args[0], start, rho),) + tuple(args[1:])
    return [target.register_forward_pre_hook(channel_hook)]


def is_identity(rho: float | torch.Tensor) -> bool:
    """True when rho is the number 1 (then hooks leave tensors untouched).

    A tensor rho is never read (that would wait for the device): it is always applied, and where it
    holds 1 the product equals the input exactly.
    """
    if isinstance(rho, torch.Tensor):
        return False
    return rho == 1.0


_ADAPTERS: list[type[Adapter]] = []


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter discoverable by :func:`find_adapter` (first match wins)."""
    _ADAPTERS.append(cls)
    return cls


def find_adapter(net: nn.Module) -> Adapter:
    """The adapter for ``net``; ValueError naming the class and the supported architectures."""
    for cls in _ADAPTERS:
        if cls.matches(net):
            return cls()
    names = ", ".join(c.name for c in _ADAPTERS) or "none registered"
    raise InputError(f"no known skip sites in a {type(net).__module__}.{type(net).__qualname__}: Skip-Tuning "
                     f"supports {names}. Load the model with skiptune.load_model, or write an Adapter "
                     "(skiptune.adapters.base) for this architecture")
