"""Adapter for our U-ViT (:mod:`skiptune.nets.uvit`), bare or wrapped in :class:`UViTPrecond`."""

from __future__ import annotations

from torch import nn
from torch.utils.hooks import RemovableHandle

from skiptune.adapters.base import (
    Adapter,
    JoinFn,
    ScaleFn,
    SkipSite,
    is_identity,
    register_adapter,
    scale_tensor,
    unwrap,
)
from skiptune.core.errors import InputError
from skiptune.nets.uvit import UViT


def _uvit(net: nn.Module) -> UViT | None:
    return unwrap(net, UViT)


@register_adapter
class UViTAdapter(Adapter):
    """Sites are the out_blocks' :class:`~skiptune.nets.uvit.TokenSkipJoin` modules.

    ``out_blocks[i]`` pops the skip pushed by ``in_blocks[depth//2 - 1 - i]``, so site i is
    ``out_blocks.i`` and site 0 the innermost. Only ``concat`` exists: the join feeds one linear
    layer, ``skip_linear(cat([x, rho skip]))``, and U-ViT has no inner shortcut or GroupNorm on the
    joined tokens for the App. C variants to act on. Every site works at the token grid
    ``img_size / patch_size`` with ``embed_dim`` features on both sides.
    """

    name = "U-ViT (skiptune.nets.uvit)"
    modes = ("concat",)

    @classmethod
    def matches(cls, net):
        return _uvit(net) is not None

    def sites(self, net):
        uvit = _uvit(net)
        joins = [(i, blk.skip_join) for i, blk in enumerate(uvit.out_blocks) if blk.skip_join is not None]
        return [SkipSite(k, f"out_blocks.{i}", j.resolution, j.skip_channels, j.main_channels)
                for k, (i, j) in enumerate(joins)]

    def attach(self, net, site: SkipSite, mode: str, scale: ScaleFn) -> list[RemovableHandle]:
        if mode != "concat":
            raise InputError(f"mode {mode!r} has no counterpart in U-ViT, whose long skips are fused by one linear "
                             "layer over cat([x, skip]) without an inner shortcut or GroupNorm; use mode 'concat'")
        join = _uvit(net).get_submodule(site.name).skip_join

        def concat_hook(module, args):
            rho = scale()
            if is_identity(rho):
                return None
            u, d = args
            return u, scale_tensor(d, rho)
        return [join.register_forward_pre_hook(concat_hook)]

    def attach_join(self, net, site: SkipSite, fn: JoinFn) -> list[RemovableHandle]:
        """Hook replacing the join's inputs ``(x, skip)`` by ``fn(x, skip)`` (token tensors [N, L, D])."""
        join = _uvit(net).get_submodule(site.name).skip_join
        return [join.register_forward_pre_hook(lambda module, args: fn(*args))]

    def staged(self, net, kind: str) -> nn.Module:
        uvit = _uvit(net)
        if kind == "encoder":
            raise InputError("U-ViT takes its time step only as an input token: with the encoder's output and skips "
                             "cached, a partial pass would repeat the key step's noise prediction exactly; use the "
                             "deep-feature cache (deepcache) for U-ViT")
        if any(blk.skip_join is None for blk in uvit.out_blocks):
            raise InputError("this U-ViT has no long skips (skip=False): there is no shallow branch to rerun; drop "
                             "--cache for this model")
        return uvit

    def sigma_argument(self, net) -> bool:
        return _uvit(net) is not net  # UViTPrecond: forward(x, sigma, class_labels=None, ...)
