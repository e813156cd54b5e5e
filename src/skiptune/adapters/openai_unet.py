"""Adapter for the OpenAI UNet (:mod:`skiptune.nets.openai_unet`), bare or wrapped in its denoisers."""

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
from skiptune.nets.openai_unet import OpenAIUNet


def _unet(net: nn.Module) -> OpenAIUNet | None:
    return unwrap(net, OpenAIUNet)


@register_adapter
class OpenAIUNetAdapter(Adapter):
    """Sites are the concatenations ``cat([h, hs.pop()])`` in front of the output blocks (``joins[i]`` for
    ``output_blocks.i``), innermost first; each site's resolution is the feature size at that block.

    - ``concat``: pre-hook on the join, ``(h, d) -> (h, rho d)``;
    - ``residual``: pre-hook on the block's first ResBlock's ``skip_connection`` (the 1x1 convolution that
      exists because the join widens the block's input), scaling its skip channels only;
    - ``norm``: pre-hook on that ResBlock's first GroupNorm ``in_layers[0]``, scaling its skip channels only.
    The ResBlock has the structure of EDM's UNetBlock (``norm0`` -> ``in_layers[0]``, ``skip`` ->
    ``skip_connection``), so the App. C variants are the same as for :mod:`skiptune.adapters.edm`. The
    GroupNorm has 32 groups: where the boundary between the decoder and skip channels falls on a group
    boundary (e.g. 768 + 768 channels at the innermost sites of the ImageNet-64 models, and every site of the
    ``-tiny`` presets), the skip channels form whole groups, which the normalisation rescales back, so ``norm``
    changes such a site only through the normalisation's eps.
    """

    name = "OpenAI UNet (guided-diffusion / consistency_models, skiptune.nets.openai_unet)"
    modes = MODES

    @classmethod
    def matches(cls, net):
        return _unet(net) is not None

    def sites(self, net):
        unet = _unet(net)
        return [SkipSite(i, f"output_blocks.{i}", j.resolution, j.skip_channels, j.main_channels)
                for i, j in enumerate(unet.joins)]

    @staticmethod
    def _index(site: SkipSite) -> int:
        return int(site.name.removeprefix("output_blocks."))

    def attach(self, net, site: SkipSite, mode: str, scale: ScaleFn) -> list[RemovableHandle]:
        unet = _unet(net)
        index = self._index(site)
        if mode == "concat":
            def concat_hook(module, args):
                rho = scale()
                if is_identity(rho):
                    return None
                h, d = args
                return h, scale_tensor(d, rho)
            return [unet.joins[index].register_forward_pre_hook(concat_hook)]
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; the OpenAI UNet supports {', '.join(MODES)}")
        block = unet.output_blocks[index][0]
        target = block.skip_connection if mode == "residual" else block.in_layers[0]
        if isinstance(target, nn.Identity):
            raise InputError(f"site {site.index} ({site.name}) keeps its width, so its ResBlock has no "
                             f"skip_connection convolution to scale in mode '{mode}'; use mode 'concat' or 'norm'")
        return hook_skip_channels(target, site.main_channels, scale)

    def attach_join(self, net, site: SkipSite, fn: JoinFn) -> list[RemovableHandle]:
        join = _unet(net).joins[self._index(site)]
        return [join.register_forward_pre_hook(lambda module, args: fn(*args))]

    def staged(self, net, kind: str) -> nn.Module:
        return _unet(net)

    def sigma_argument(self, net) -> bool:
        return _unet(net) is not net  # ADMPrecond / CMPrecond: forward(x, sigma, class_labels=None)
