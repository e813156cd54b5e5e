"""Building blocks of the EDM-compatible UNets.

Parameter and buffer names follow the public EDM checkpoints (Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models"), so that their state dicts load with
``strict=True``. The code is an independent implementation of the same maths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from skiptune.core.errors import InputError


def random_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random initial weights: ``xavier_uniform|xavier_normal|kaiming_uniform|kaiming_normal``."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise InputError(f"unknown init mode {mode!r}; use xavier_uniform, xavier_normal, kaiming_uniform or "
                     "kaiming_normal")


class Linear(nn.Module):
    """Fully connected layer ``y = x W^T + b`` with EDM's initialisation options."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init_mode: str = "kaiming_normal", init_weight: float = 1, init_bias: float = 0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(random_init([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(random_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), b)


def _resample_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable FIR resampling kernel ``f f^T / (sum f)^2`` of shape [1, 1, k, k]."""
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


class Conv2d(nn.Module):
    """Convolution with optional FIR up/downsampling by 2 (``kernel=0`` means resampling only).

    Upsampling is a depthwise transposed convolution with ``4 f f^T``, downsampling a depthwise
    stride-2 convolution with ``f f^T``; ``fused_resample`` runs the weight convolution before
    downsampling / after upsampling in one padded pass, as NCSN++'s residual encoder does.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter: Sequence[float] = (1, 1),
                 fused_resample: bool = False, init_mode: str = "kaiming_normal",
                 init_weight: float = 1, init_bias: float = 0):
        if up and down:
            raise InputError("Conv2d cannot both upsample and downsample")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = nn.Parameter(random_init(shape, **fans) * init_weight) if kernel else None
        self.bias = nn.Parameter(random_init([out_channels], **fans) * init_bias) if kernel and bias else None
        self.register_buffer("resample_filter", _resample_kernel(resample_filter) if (up or down) else None)

    def _depthwise(self, x: torch.Tensor, f: torch.Tensor, up: bool, padding: int) -> torch.Tensor:
        c = x.shape[1]
        if up:
            return F.conv_transpose2d(x, (f * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=padding)
        return F.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = self._depthwise(x, f, True, max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._depthwise(x, f, False, 0)
        else:
            if self.up or self.down:
                x = self._depthwise(x, f, self.up, f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with ``min(num_groups, C // min_channels_per_group)`` groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """Residual block of DDPM++ / NCSN++ / ADM with optional resampling and self-attention.

    ``out = (conv1(act(norm1(conv0(act(norm0(x)))) modulated by emb)) + skip(x)) * skip_scale``,
    followed, with attention, by ``out = (proj(attn(norm2(out))) + out) * skip_scale``.
    The residual ``skip`` here is the block's inner shortcut, not the UNet's long skip.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: int | None = None,
                 channels_per_head: int = 64, dropout: float = 0, skip_scale: float = 1, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False,
                 adaptive_scale: bool = True, init: dict | None = None, init_zero: dict | None = None,
                 init_attn: dict | None = None):
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_zero) if init_zero is not None else dict(init_weight=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = float(skip_scale)
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self._attend(self.norm2(x))) + x) * self.skip_scale
        return x

    def _attend(self, h: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over pixels, softmax(q^T k / sqrt(c)) v, in float32.

        The qkv channels are laid out as [head, channel, (q, k, v)], as in the EDM checkpoints.
        """
        n, c, hh, ww = h.shape
        heads = self.num_heads
        qkv = self.qkv(h).reshape(n * heads, c // heads, 3, hh * ww)
        q, k, v = (t.to(torch.float32).transpose(1, 2) for t in qkv.unbind(2))  # [n*heads, hw, c/heads]
        a = F.scaled_dot_product_attention(q, k, v)
        return a.transpose(1, 2).reshape(n, c, hh, ww).to(h.dtype)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding ``[cos(x w_j), sin(x w_j)]`` with ``w_j = max_positions^(-j/J)``."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        j = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** j
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[cos(2 pi x f), sin(2 pi x f)]`` with f ~ N(0, scale^2) (NCSN++)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class SkipJoin(nn.Module):
    """The concatenation of a decoder tensor ``u`` with a popped encoder skip ``d``: ``cat(u, d)``.

    It has no parameters; it exists so that Skip-Tuning can scale ``d`` through a forward
    pre-hook on this module (seed 003, Def. 3.1) without touching any other code path.
    """

    def __init__(self, main_channels: int, skip_channels: int, resolution: int):
        super().__init__()
        self.main_channels = main_channels
        self.skip_channels = skip_channels
        self.resolution = resolution

    def forward(self, u: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.cat([u, d], dim=1)

    def extra_repr(self) -> str:
        return f"main={self.main_channels}, skip={self.skip_channels}, res={self.resolution}"
