"""Small networks with known answers for the analysis tests."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from skiptune.adapters.base import _ADAPTERS, Adapter, SkipSite, is_identity, register_adapter, scale_tensor
from skiptune.nets.layers import SkipJoin


def tiny_net(seed: int = 0) -> nn.Module:
    """An 8x8 gray EDMPrecond SongUNet with 4 skip sites, weights perturbed so every skip matters."""
    from conftest import randomize
    from skiptune.nets.presets import build_network

    torch.manual_seed(seed)
    net = build_network("EDMPrecond", dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet",
                                           model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[],
                                           dropout=0.0, augment_dim=0))
    return randomize(net, seed, scale=0.1).eval()


class JoinNet(nn.Module):
    """Two joins with linear inputs: site 0 joins ``u0 = a0 x`` with ``d0 = b0 x``; site 1 joins
    ``u1 = u0 + d0`` with ``d1 = b1 x``; the output is ``(u1 + d1) / scale``.

    So ``||d0|| / ||u0|| = |b0 / a0|`` and ``||d1|| / ||u1|| = |b1 / (a0 + b0)|`` for every input, and with
    skips scaled by rho_0, rho_1 the output is ``(a0 + rho_0 b0 + rho_1 b1) x / scale``.
    """

    img_resolution = 4
    img_channels = 1
    label_dim = 0
    sigma_data = 0.5

    def __init__(self, a0=2.0, b0=3.0, b1=1.0, scale=1.0):
        super().__init__()
        self.a0, self.b0, self.b1, self.scale = a0, b0, b1, scale
        self.joins = nn.ModuleList([SkipJoin(1, 1, 4), SkipJoin(1, 1, 4)])

    def forward(self, x, sigma, class_labels=None):
        h = self.joins[0](self.a0 * x, self.b0 * x)
        u1 = h[:, :1] + h[:, 1:]
        h = self.joins[1](u1, self.b1 * x)
        return (h[:, :1] + h[:, 1:]) / self.scale


class MaskNet(nn.Module):
    """Output linear in rho at two sites acting on disjoint pixels: ``D = (x + rho_0 x m + rho_1 x (1 - m)) / c``
    with ``c = 1 + r0* m + r1* (1 - m)`` (m = left half of the image). At sigma -> 0, D = y exactly when
    rho = (r0*, r1*): the pixel loss has its unique minimum there."""

    img_resolution = 4
    img_channels = 1
    label_dim = 0
    sigma_data = 0.5

    def __init__(self, target=(0.6, 1.3)):
        super().__init__()
        m = torch.zeros(1, 1, 4, 4)
        m[..., :2] = 1.0
        self.register_buffer("mask", m)
        self.target = target
        self.joins = nn.ModuleList([SkipJoin(1, 1, 4), SkipJoin(1, 1, 4)])

    def forward(self, x, sigma, class_labels=None):
        m = self.mask
        h = self.joins[0](x, x * m)
        h = self.joins[1](h[:, :1] + h[:, 1:], x * (1 - m))
        c = 1 + self.target[0] * m + self.target[1] * (1 - m)
        return (h[:, :1] + h[:, 1:]) / c


class ToyAdapter(Adapter):
    """Adapter for :class:`JoinNet` and :class:`MaskNet`: sites are ``joins[0]``, ``joins[1]``."""

    name = "toy"

    @classmethod
    def matches(cls, net):
        return isinstance(net, (JoinNet, MaskNet))

    def sites(self, net):
        return [SkipSite(i, f"joins.{i}", 4, 1, 1) for i in range(len(net.joins))]

    def attach(self, net, site, mode, scale):
        def hook(module, args):
            rho = scale()
            return None if is_identity(rho) else (args[0], scale_tensor(args[1], rho))
        return [net.joins[site.index].register_forward_pre_hook(hook)]

    def attach_join(self, net, site, fn):
        return [net.joins[site.index].register_forward_pre_hook(lambda module, args: fn(*args))]


@contextlib.contextmanager
def toy_adapter():
    register_adapter(ToyAdapter)
    try:
        yield
    finally:
        _ADAPTERS.remove(ToyAdapter)


class LinearDenoiser(nn.Module):
    """``D(x, sigma) = A x`` (flattened): its Jacobian is A at every input."""

    label_dim = 0
    sigma_data = 0.5

    def __init__(self, a: torch.Tensor, shape=(1, 4, 4)):
        super().__init__()
        self.register_buffer("a", a)
        self.shape = shape
        self.img_channels, self.img_resolution = shape[0], shape[1]

    def forward(self, x, sigma, class_labels=None):
        return (x.flatten(1).to(self.a.dtype) @ self.a.T).reshape(x.shape[0], *self.shape)
