"""Adapter for our EDM-compatible UNets (``SongUNet``, ``DhariwalUNet``), bare or preconditioned."""

from __future__ import annotations

from torch import nn
from torch.utils.hooks import RemovableHandle

from skiptune.adapters.base import (
    MODES,
    Adapter,
    JoinFn,
    ScaleFn,
    SkipSite,
    hook_skip_channels,
    is_identity,
    register_adapter,
    scale_tensor,
    unwrap,
)
from skiptune.core.errors import InputError
from skiptune.nets.unets import _SkipUNet


def _unet(net: nn.Module) -> _SkipUNet | None:
    return unwrap(net, _SkipUNet)


@register_adapter
class EDMUNetAdapter(Adapter):
    """Sites are the decoder's :class:`~skiptune.nets.layers.SkipJoin` modules.

    - ``concat``: pre-hook on the join, ``(u, d) -> (u, rho d)``;
    - ``residual``: pre-hook on the decoder block's inner shortcut ``skip`` (a 1x1 conv, present
      because the join widens the block's input), scaling its skip channels only;
    - ``norm``: pre-hook on the block's ``norm0``, scaling its skip channels only.
    Because ``norm0`` normalises groups of channels, ``concat`` acts through the shortcut except in
    a group that straddles the u/d boundary (seed 003, App. C).
    """

    name = "EDM SongUNet/DhariwalUNet (skiptune.nets)"
    modes = MODES

    @classmethod
    def matches(cls, net):
        return _unet(net) is not None

    def sites(self, net):
        unet = _unet(net)
        return [SkipSite(i, f"dec.{name}", j.resolution, j.skip_channels, j.main_channels)
                for i, (name, j) in enumerate(unet.joins.items())]

    def attach(self, net, site: SkipSite, mode: str, scale: ScaleFn) -> list[RemovableHandle]:
        unet = _unet(net)
        block_name = site.name.removeprefix("dec.")
        if mode == "concat":
            def concat_hook(module, args):
                rho = scale()
                if is_identity(rho):
                    return None
                u, d = args
                return u, scale_tensor(d, rho)
            return [unet.joins[block_name].register_forward_pre_hook(concat_hook)]

        block = unet.dec[block_name]
        target = block.skip if mode == "residual" else block.norm0
        if target is None:
            raise InputError(f"site {site.index} ({site.name}) has no inner shortcut conv to scale in "
                             f"mode '{mode}'; use mode 'concat'")
        return hook_skip_channels(target, site.main_channels, scale)

    def attach_join(self, net, site: SkipSite, fn: JoinFn) -> list[RemovableHandle]:
        def join_hook(module, args):
            return fn(*args)
        return [_unet(net).joins[site.name.removeprefix("dec.")].register_forward_pre_hook(join_hook)]

    def staged(self, net, kind: str) -> nn.Module:
        return _unet(net)

    def sigma_argument(self, net) -> bool:
        return _unet(net) is not net  # a preconditioner: forward(x, sigma, class_labels=None, ...)
