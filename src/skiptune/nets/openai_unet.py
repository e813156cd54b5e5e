"""The OpenAI diffusion UNet (improved-diffusion, guided-diffusion, consistency_models, latent-diffusion) and its
denoisers.

The network is the ADM UNet of Nichol & Dhariwal 2021 and Dhariwal & Nichol 2021 in its original
layout, an independent implementation of the same maths whose module and parameter names are those
of the public checkpoints (``time_embed.{0,2}``, ``label_emb``, ``input_blocks.N.M``,
``middle_block.M``, ``output_blocks.N.M``, ``out.{0,2}``; inside a block ``in_layers``,
``emb_layers``, ``out_layers``, ``skip_connection``, ``op``, ``conv``, ``norm``, ``qkv``,
``proj_out``), so their state dicts load with ``strict=True``.

Every output block starts by concatenating the decoder tensor with the encoder feature pushed by the
matching input block, ``cat([h, hs.pop()], dim=1)``: that concatenation is a parameter-free
:class:`~skiptune.nets.layers.SkipJoin` module (``OpenAIUNet.joins[i]`` for ``output_blocks.i``), the
Skip-Tuning site; the first site is the innermost (lowest resolution), as the encoder features are
popped.

Constructor arguments are those of the public ``UNetModel``; ``attention_resolutions`` holds
*downsampling rates* (2 = half the image size), as there (the public scripts convert
``--attention_resolutions 32,16,8`` at 64x64 to ``(2, 4, 8)``). One addition, ``attention_conv_dims``,
says whether the attention's ``qkv``/``proj_out`` are 1-D convolutions over flattened pixels
(guided-diffusion and improved-diffusion: weights [3C, C, 1]) or 2-D 1x1 convolutions
(consistency_models: weights [3C, C, 1, 1]).

CompVis latent-diffusion (LDM) extends the same ``UNetModel`` with ``use_spatial_transformer``: every attention
block becomes a :class:`SpatialTransformer` (``norm``, ``proj_in``, ``transformer_blocks.K.{attn1, ff, attn2,
norm1, norm2, norm3}``, ``proj_out``) whose ``attn2`` attends to a conditioning ``context`` [N, L, context_dim],
passed to :meth:`OpenAIUNet.forward` as ``context``.

Three wrappers make it an EDM-convention denoiser ``D(x, sigma) -> x0``:
:class:`ADMPrecond` (discrete-time eps- or v-prediction over 1000 linear, cosine or LDM's scaled-linear betas),
:class:`LDMPrecond` (ADMPrecond on latents, with LDM's class embedder ``cond_stage_model`` making the context) and
:class:`CMPrecond` (the consistency-model / EDM parameterization of consistency_models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from skiptune.core.errors import InputError
from skiptune.core.schedules import alphas_cumprod, sigmas_from_alphas_cumprod
from skiptune.core.sigma import publish_sigma
from skiptune.nets.layers import SkipJoin
from skiptune.nets.staged import Keep, StagedUNet, stop_encoder
from skiptune.nets.uvit import TimestepEmbedding

# --- layers ---------------------------------------------------------------------------------------------------


class GroupNorm32(nn.GroupNorm):
    """32-group normalisation computed in float32 and returned in the input's dtype (so a float16 torso
    is normalised in float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def _norm(channels: int, eps: float = 1e-5) -> GroupNorm32:
    if channels % 32:
        raise InputError(f"the OpenAI UNet normalises with 32 groups: widths must be multiples of 32, got {channels}")
    return GroupNorm32(32, channels, eps=eps)


def _zero(module: nn.Module) -> nn.Module:
    """``module`` with every parameter set to zero (the public initialisation of the last layer of a branch)."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


class TimestepBlock(nn.Module):
    """A layer whose forward takes the embedding of time and class as a second argument."""


class TimestepEmbedSequential(nn.Sequential):
    """Layers applied in turn; :class:`TimestepBlock` layers also receive the embedding, :class:`SpatialTransformer`
    layers the context."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor,  # type: ignore[override]
                context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by 2, then a 3x3 convolution ``conv`` if ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Downsampling by 2: a stride-2 3x3 convolution (``use_conv``) or a 2x2 average pool, both called ``op``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.out_channels != channels:
                raise InputError("average-pool downsampling cannot change the width")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the embedding, optionally resampling (``up``/``down``).

    ``h = conv(silu(norm(x)))`` (resampled between the activation and the convolution when ``up``/``down``),
    then the embedding enters as ``norm(h) (1 + scale) + shift`` (``use_scale_shift_norm``) or as
    ``norm(h + e)``, then ``h = conv(dropout(silu(.)))``; the output is ``skip_connection(x) + h``, with
    ``skip_connection`` the identity when the width is kept, else a 1x1 (or, ``use_conv``, 3x3) convolution.
    The block's first layer ``in_layers[0]`` and ``skip_connection`` are the two consumers of its input.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            _norm(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            _zero(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)))
        if self.out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, act, conv = self.in_layers
        if self.updown:
            h = conv(self.h_upd(act(norm(x))))
            x = self.x_upd(x)
        else:
            h = conv(act(norm(x)))
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        out_norm, out_act, out_drop, out_conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
        else:
            h = out_norm(h + e)
        h = out_conv(out_drop(out_act(h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over pixels: ``x + proj_out(attention(qkv(norm(x))))``.

    Heads: ``num_heads``, or ``channels // num_head_channels`` when ``num_head_channels`` is given. The
    ``qkv`` output channels are read as [head, (q, k, v), channel] (``new_order=False``, the public
    "legacy" order) or [(q, k, v), head, channel] (``new_order=True``). Attention is
    softmax(q^T k / sqrt(channels per head)) v computed in float32 whatever the torso's dtype.
    ``conv_dims`` = 1: ``qkv``/``proj_out`` are 1-D convolutions over the flattened pixels; 2: 1x1 2-D ones.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, new_order: bool = False,
                 conv_dims: int = 1):
        super().__init__()
        if num_head_channels == -1:
            heads = num_heads
        else:
            if channels % num_head_channels:
                raise InputError(f"attention width {channels} is not a multiple of num_head_channels "
                                 f"{num_head_channels}")
            heads = channels // num_head_channels
        if heads < 1 or channels % heads:
            raise InputError(f"attention width {channels} cannot be split into {heads} heads")
        if conv_dims not in (1, 2):
            raise InputError(f"attention_conv_dims must be 1 or 2, got {conv_dims}")
        self.channels = channels
        self.num_heads = heads
        self.new_order = new_order
        self.conv_dims = conv_dims
        conv = nn.Conv1d if conv_dims == 1 else nn.Conv2d
        self.norm = _norm(channels)
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj_out = _zero(conv(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        length = math.prod(spatial)
        if self.conv_dims == 1:
            x = x.reshape(b, c, length)
        heads, ch = self.num_heads, c // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3 * c, length)
        if self.new_order:
            q, k, v = qkv.reshape(b, 3, heads, ch, length).unbind(1)
        else:
            q, k, v = qkv.reshape(b, heads, 3, ch, length).unbind(2)
        q, k, v = (t.to(torch.float32).transpose(-1, -2) for t in (q, k, v))  # [b, heads, length, ch]
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(-1, -2).reshape(b, c, *([length] if self.conv_dims == 1 else spatial)).to(x.dtype)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, new_order={self.new_order}"


# --- the spatial transformer of latent diffusion (CompVis ldm/modules/attention.py) ----------------------------


class CrossAttention(nn.Module):
    """Multi-head attention of the tokens x [N, L, query_dim] over ``context`` [N, M, context_dim] (over x itself
    when None): ``to_out(softmax(q k^T / sqrt(dim_head)) v)`` with q = ``to_q`` x, k = ``to_k`` c, v = ``to_v`` c
    (bias-free linear maps to ``heads * dim_head`` channels, split into heads) and ``to_out`` = (linear, dropout)."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(query_dim if context_dim is None else context_dim, inner, bias=False)
        self.to_v = nn.Linear(query_dim if context_dim is None else context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # [b, len, heads * d] -> [b, heads, len, d]
            return t.reshape(b, t.shape[1], self.heads, self.dim_head).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context)))
        return self.to_out(a.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class GEGLU(nn.Module):
    """``a * gelu(g)`` with ``(a, g)`` the two halves of ``proj(x)`` (Shazeer 2020); exact (erf) GELU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """``net`` = (GEGLU to ``mult * dim`` channels, dropout, linear back to ``dim``)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x += attn1(norm1(x))`` (self-attention), ``x += attn2(norm2(x), context)``
    (cross-attention; self-attention when the context is None), ``x += ff(norm3(x))``."""

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0, context_dim: int | None = None):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """A transformer over the pixels of an image conditioned on a context (LDM's ``SpatialTransformer``):
    ``x + proj_out(blocks(proj_in(norm(x))))``, the pixels read as tokens [N, H W, heads * d_head] between the 1x1
    convolutions ``proj_in`` and ``proj_out`` (zero-initialised); ``norm`` is a 32-group GroupNorm with eps 1e-6.

    The transformer is computed in float32 whatever the torso's dtype (the public ``convert_to_fp16`` of LDM leaves
    it, like everything else, in float32) and its output cast back to the input's dtype.
    """

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1, dropout: float = 0.0,
                 context_dim: int | None = None):
        super().__init__()
        inner = n_heads * d_head
        self.in_channels = in_channels
        self.context_dim = context_dim
        self.norm = _norm(in_channels, eps=1e-6)
        self.proj_in = nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, n_heads, d_head, dropout, context_dim)
                                                 for _ in range(depth)])
        self.proj_out = _zero(nn.Conv2d(inner, in_channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        x_in = x.float()
        tokens = self.proj_in(self.norm(x_in)).flatten(2).transpose(1, 2)
        context = None if context is None else context.float()
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        out = self.proj_out(tokens.transpose(1, 2).reshape(b, -1, h, w))
        return (out + x_in).to(x.dtype)

    def extra_repr(self) -> str:
        return f"context_dim={self.context_dim}"


# --- the UNet -------------------------------------------------------------------------------------------------


class OpenAIUNet(StagedUNet, nn.Module):
    """The UNet of improved-diffusion / guided-diffusion / consistency_models (``UNetModel``), 2-D images.

    ``forward(x, timesteps, y=None)``: ``timesteps`` [N] (fractional allowed) enter through sinusoidal
    features of width ``model_channels`` and ``time_embed``; a class-conditional network
    (``num_classes``) adds ``label_emb(y)`` for integer labels y [N], or ``y @ label_emb.weight`` for rows
    of class weights [N, num_classes] (one-hot rows give the same embedding exactly).

    ``use_fp16`` is recorded but, as in the public code, the weights stay float32 until
    :meth:`convert_to_fp16` turns the convolutions of the input, middle and output blocks to float16
    (time and class embeddings, normalisations and the attention itself stay in float32).

    Latent diffusion's options: ``use_spatial_transformer`` puts a :class:`SpatialTransformer` of
    ``transformer_depth`` blocks wherever the attention would be, attending to a context of width ``context_dim``
    (``forward(..., context=[N, L, context_dim])``); its heads are ``num_heads``, or ``width // num_head_channels``
    when ``num_head_channels`` is given, each ``width // heads`` wide (the public code's ``legacy=True``; the
    decoder's transformers, unlike its attention blocks, ignore ``num_heads_upsample``).
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True, dims: int = 2,
                 num_classes: int | None = None, use_checkpoint: bool = False, use_fp16: bool = False,
                 num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False, attention_conv_dims: int = 1,
                 use_spatial_transformer: bool = False, transformer_depth: int = 1, context_dim: int | None = None):
        super().__init__()
        if dims != 2:
            raise InputError(f"only 2-D images are supported (dims=2), got dims={dims}")
        if use_spatial_transformer != (context_dim is not None):
            raise InputError("use_spatial_transformer and context_dim go together: the transformers attend to a "
                             f"context of width context_dim (got use_spatial_transformer={use_spatial_transformer}, "
                             f"context_dim={context_dim})")
        if use_spatial_transformer and (int(transformer_depth) != transformer_depth or transformer_depth < 1):
            raise InputError(f"transformer_depth must be an integer >= 1, got {transformer_depth}")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.channel_mult = tuple(channel_mult)
        self.num_classes = num_classes
        self.context_dim = context_dim
        self.use_fp16 = use_fp16
        self.use_checkpoint = use_checkpoint  # recorded only: inference never checkpoints
        emb_dim = model_channels * 4

        def res(cin, cout, **kw):
            return ResBlock(cin, emb_dim, dropout, out_channels=cout, use_scale_shift_norm=use_scale_shift_norm, **kw)

        def attn(ch, heads):
            if use_spatial_transformer:
                heads = num_heads if num_head_channels == -1 else ch // num_head_channels
                if heads < 1 or ch % heads:
                    raise InputError(f"transformer width {ch} cannot be split into {heads} heads")
                return SpatialTransformer(ch, heads, ch // heads, depth=int(transformer_depth), context_dim=context_dim)
            return AttentionBlock(ch, num_heads=heads, num_head_channels=num_head_channels,
                                  new_order=use_new_attention_order, conv_dims=attention_conv_dims)

        self.time_features = TimestepEmbedding(model_channels)
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        pushed = [ch]  # width of every feature the encoder pushes
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in self.attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                pushed.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                pushed.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        self.joins = nn.ModuleList()  # joins[i]: the concatenation in front of output_blocks[i]
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip = pushed.pop()
                self.joins.append(SkipJoin(ch, skip, image_size // ds))
                layers = [res(ch + skip, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in self.attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the torso (float16 after :meth:`convert_to_fp16`)."""
        return self.input_blocks[0][0].weight.dtype

    def _torso_convs(self):
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            # the spatial transformers stay float32 (see SpatialTransformer)
            kept = {id(m) for t in part.modules() if isinstance(t, SpatialTransformer) for m in t.modules()}
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)) and id(m) not in kept:
                    yield m

    def convert_to_fp16(self) -> OpenAIUNet:
        """Convolutions of the input, middle and output blocks to float16 (the public ``convert_to_fp16``)."""
        for m in self._torso_convs():
            m.half()
        return self

    def convert_to_fp32(self) -> OpenAIUNet:
        for m in self._torso_convs():
            m.float()
        return self

    def embed_labels(self, y: torch.Tensor) -> torch.Tensor:
        if y.is_floating_point():
            if y.ndim != 2 or y.shape[1] != self.num_classes:
                raise InputError(f"class weights must have shape [N, {self.num_classes}], got {tuple(y.shape)}")
            return y.to(self.label_emb.weight.dtype) @ self.label_emb.weight
        return self.label_emb(y.reshape(-1).long())

    def _check_context(self, context: torch.Tensor | None) -> None:
        if self.context_dim is None:
            if context is not None:
                raise InputError("this network has no spatial transformers: it takes no context")
            return
        if context is None or context.ndim != 3 or context.shape[2] != self.context_dim:
            got = "none" if context is None else f"shape {list(context.shape)}"
            raise InputError(f"this network's transformers attend to a context [N, L, {self.context_dim}]; got {got}")

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        if (y is not None) != (self.num_classes is not None):
            raise InputError("pass labels y if and only if the network is class-conditional "
                             f"(num_classes={self.num_classes})")
        self._check_context(context)
        emb = self.time_embed(self.time_features(timesteps.reshape(-1)))
        if y is not None:
            emb = emb + self.embed_labels(y)
        h = self._stages(x.to(self.dtype), (emb, context), self._encode, self._decode)
        return self.out(h.to(x.dtype))

    def _encode(self, h: torch.Tensor, emb: tuple, pushes: int | None = None) -> tuple[torch.Tensor, list]:
        """The input blocks, each pushing its output (``emb`` is the embedding and the cross-attention context)."""
        hs = []
        for block in self.input_blocks:
            if stop_encoder(hs, pushes):
                break
            h = block(h, *emb)
            hs.append(h)
        return h, hs

    def _decode(self, h: torch.Tensor, hs: list, emb: tuple, start: int | None = None,
                keep: Keep | None = None) -> torch.Tensor:
        """The middle block, then the output blocks; site i is ``output_blocks[i]`` (:mod:`skiptune.nets.staged`)."""
        if start is None:
            h = self.middle_block(h, *emb)
        for i, (join, block) in enumerate(zip(self.joins, self.output_blocks, strict=True)):
            if start is not None and i < start:
                continue
            if keep is not None and i == keep[0]:
                keep[1](h)
            h = block(join(h, hs.pop()), *emb)
        return h


# --- denoisers ------------------------------------------------------------------------------------------------

PREDICTIONS = ("eps", "v")
#: the beta schedules of :class:`ADMPrecond`
SCHEDULES = ("linear", "cosine", "scaled_linear")


class _OpenAIPrecond(nn.Module):
    """Shared parts: the inner network ``self.model``, labels, sigma as a per-sample vector."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, learn_sigma: bool, unet_kwargs: dict):
        super().__init__()
        if label_dim < 0:
            raise InputError(f"label_dim must be >= 0, got {label_dim}")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.learn_sigma = learn_sigma
        self.model = OpenAIUNet(image_size=img_resolution, in_channels=img_channels,
                                out_channels=img_channels * (2 if learn_sigma else 1),
                                num_classes=label_dim or None, **unet_kwargs)

    def labels(self, class_labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
        """Labels for the network: integer indices [N], or one-hot rows [N, label_dim] (float)."""
        if not self.label_dim:
            return None
        if class_labels is None:
            raise InputError("this network is class-conditional: pass class_labels (one-hot [N, label_dim] or "
                             "integer indices)")
        y = torch.as_tensor(class_labels, device=device)
        if y.is_floating_point():
            y = y.to(torch.float32).reshape(-1, self.label_dim)
            return y.expand(n, -1) if y.shape[0] == 1 else y
        y = y.reshape(-1).long()
        return y.expand(n) if y.numel() == 1 else y

    @staticmethod
    def _sigma(sigma, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1)
        return sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma

    def _run(self, x_in: torch.Tensor, c_noise: torch.Tensor, sigma: torch.Tensor, class_labels) -> torch.Tensor:
        """The network's first ``img_channels`` outputs in float32 (the eps/v part of a learned-sigma output)."""
        y = self.labels(class_labels, x_in.shape[0], x_in.device)
        with publish_sigma(sigma):
            out = self.model(x_in, c_noise, y)  # float32 in and out; a float16 torso casts inside
        return out[:, : self.img_channels].to(torch.float32)


class ADMPrecond(_OpenAIPrecond):
    """A discrete-time model of improved-/guided-diffusion as an EDM-convention denoiser.

    Schedule: ``num_timesteps`` betas, ``linear`` (Ho et al.: linspace(0.1, 20, T) / T, i.e. 1e-4..0.02 for
    T = 1000; ``linear_start``/``linear_end`` replace those ends), ``cosine`` (Nichol & Dhariwal: abar(t) =
    cos^2((t/T + 0.008) / 1.008 pi/2), betas clipped at 0.999) or ``scaled_linear`` (latent diffusion's "linear",
    ``make_beta_schedule``: linspace(sqrt(linear_start), sqrt(linear_end), T)^2, by default LDM's 0.0015..0.0195);
    abar_t = prod_{s<=t} (1 - beta_s) and the trained levels sigma_t = sqrt(1/abar_t - 1), t = 0..T-1.

    With x = y + sigma n the network sees ``x / sqrt(1 + sigma^2)`` (the DDPM state) and the integer
    timestep t whose log sigma_t is *nearest* to log sigma (sigma is rounded for the time input only;
    no interpolation between levels: :meth:`round_sigma` gives the level used). Outputs:
    ``prediction='eps'``: D = x - sigma eps; ``'v'``: D = x / (1 + sigma^2) - sigma v / sqrt(1 + sigma^2).
    ``learn_sigma``: the network outputs 2 x img_channels channels (eps and the variance interpolation);
    only the first half is used. The trained range is [sigma_0, sigma_{T-1}].
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, schedule: str = "linear",
                 num_timesteps: int = 1000, learn_sigma: bool = False, prediction: str = "eps",
                 linear_start: float | None = None, linear_end: float | None = None, **unet_kwargs):
        if schedule not in SCHEDULES:
            raise InputError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
        if prediction not in PREDICTIONS:
            raise InputError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if schedule == "cosine" and (linear_start is not None or linear_end is not None):
            raise InputError("linear_start/linear_end set the ends of a linear schedule; the cosine schedule has none")
        super().__init__(img_resolution, img_channels, label_dim, learn_sigma, unet_kwargs)
        self.schedule = schedule
        self.prediction = prediction
        self.num_timesteps = int(num_timesteps)
        with torch.device("cpu"):  # a fixed schedule, also when the network is built on the meta device
            scale = 1000 / self.num_timesteps
            if schedule == "scaled_linear":
                start = 0.0015 if linear_start is None else float(linear_start)
                end = 0.0195 if linear_end is None else float(linear_end)
            else:
                start = 1e-4 * scale if linear_start is None else float(linear_start)
                end = 0.02 * scale if linear_end is None else float(linear_end)
            abar = alphas_cumprod(self.num_timesteps, schedule, start, end)
            sig = sigmas_from_alphas_cumprod(abar)
        self.register_buffer("alphas_cumprod", abar, persistent=False)
        self.register_buffer("sigmas", sig, persistent=False)
        self.register_buffer("log_sigmas", sig.log(), persistent=False)
        self.sigma_min = float(sig[0])
        self.sigma_max = float(sig[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The trained timestep whose log sigma is nearest to each log sigma (int64, same shape)."""
        sigma = torch.as_tensor(sigma)
        ls = self.log_sigmas
        log_s = sigma.to(device=ls.device, dtype=torch.float64).reshape(-1).log().contiguous()
        hi = torch.searchsorted(ls, log_s).clamp(1, ls.shape[0] - 1)
        lo = hi - 1
        t = torch.where((log_s - ls[lo]).abs() <= (ls[hi] - log_s).abs(), lo, hi)
        return t.reshape(sigma.shape).to(sigma.device)

    def round_sigma(self, sigma, return_index: bool = False):
        sigma = torch.as_tensor(sigma)
        t = self.timestep(sigma)
        return t if return_index else self.sigmas.to(sigma.device)[t].to(sigma.dtype)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = self._sigma(sigma, x)
        s = sigma.reshape(-1, 1, 1, 1)
        c_in = 1 / (s**2 + 1).sqrt()
        out = self._run(c_in * x, self.timestep(sigma).to(torch.float32), sigma, class_labels)
        if self.prediction == "eps":
            return x - s * out
        return c_in**2 * x - s * c_in * out

    def extra_repr(self) -> str:
        return (f"schedule={self.schedule}, T={self.num_timesteps}, prediction={self.prediction}, "
                f"sigma=[{self.sigma_min:.4g}, {self.sigma_max:.4g}], label_dim={self.label_dim}")


class ClassEmbedder(nn.Module):
    """Latent diffusion's class conditioning (``cond_stage_model``): the ``embedding`` row of each label as a
    one-token context [N, 1, embed_dim]. Labels are integer indices [N] or rows of class weights [N, n]
    (n <= n_classes; ``y @ embedding.weight[:n]``, so one-hot rows give the rows of their labels exactly)."""

    def __init__(self, n_classes: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.is_floating_point():
            rows = y.to(self.embedding.weight.dtype) @ self.embedding.weight[: y.shape[1]]
        else:
            rows = self.embedding(y.reshape(-1).long())
        return rows[:, None, :]


class LDMPrecond(ADMPrecond):
    """A CompVis latent diffusion model (``LatentDiffusion`` with ``conditioning_key: crossattn``) as an
    EDM-convention denoiser of its latents: :class:`ADMPrecond`'s discrete-time eps-prediction on LDM's
    ``scaled_linear`` betas (``linear_start``/``linear_end``; LDM's configs: 0.0015, 0.0195, T = 1000), the UNet
    with spatial transformers, and for a class-conditional model (``label_dim`` > 0) the class embedder
    ``cond_stage_model`` whose row of each label is the transformers' context.

    ``null_label=True``: the embedder has one more row, ``label_dim``, trained as "no class" (cin256-v2's class
    1000, what its classifier-free guidance feeds the unconditional pass); it is used when no labels are given.
    ``latent_scale_factor``: the model's latents are the first stage's latents times this factor (LDM's
    ``scale_factor``; 1.0 for cin256-v2). The state dict is that of the checkpoint's ``model.diffusion_model.*``
    and ``cond_stage_model.*`` with ``diffusion_model.`` dropped (:mod:`skiptune.io.ldm`).
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, null_label: bool = False,
                 latent_scale_factor: float = 1.0, schedule: str = "scaled_linear", num_timesteps: int = 1000,
                 prediction: str = "eps", linear_start: float | None = None, linear_end: float | None = None,
                 **unet_kwargs):
        if label_dim < 0 or (null_label and not label_dim):
            raise InputError(f"label_dim must be >= 0 (and > 0 with null_label), got {label_dim}")
        context_dim = unet_kwargs.get("context_dim")
        if label_dim and context_dim is None:
            raise InputError("a class-conditional LDM embeds its classes as the context of its spatial transformers: "
                             "give context_dim (and use_spatial_transformer=True)")
        if not float(latent_scale_factor) > 0:
            raise InputError(f"latent_scale_factor must be > 0, got {latent_scale_factor}")
        super().__init__(img_resolution, img_channels, label_dim=0, schedule=schedule, num_timesteps=num_timesteps,
                         prediction=prediction, linear_start=linear_start, linear_end=linear_end, **unet_kwargs)
        self.label_dim = label_dim
        self.null_label = null_label
        self.latent_scale_factor = float(latent_scale_factor)
        if label_dim:
            self.cond_stage_model = ClassEmbedder(label_dim + (1 if null_label else 0), context_dim)

    def labels(self, class_labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
        """Integer indices [N] or class weights [N, label_dim] (float); the null label when None and trained."""
        if not self.label_dim:
            return None
        if class_labels is None:
            if not self.null_label:
                raise InputError("this LDM is class-conditional without a null label: pass class_labels")
            return torch.full((n,), self.label_dim, dtype=torch.long, device=device)
        return super().labels(class_labels, n, device)

    def _run(self, x_in: torch.Tensor, c_noise: torch.Tensor, sigma: torch.Tensor, class_labels) -> torch.Tensor:
        y = self.labels(class_labels, x_in.shape[0], x_in.device)
        context = None if y is None else self.cond_stage_model(y)
        with publish_sigma(sigma):
            out = self.model(x_in, c_noise, context=context)
        return out[:, : self.img_channels].to(torch.float32)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, null_label={self.null_label}, latent_scale_factor={self.latent_scale_factor:g}"


class CMPrecond(_OpenAIPrecond):
    """The denoiser of consistency_models (``KarrasDenoiser.denoise``): D = c_skip x + c_out F(c_in x, c_noise).

    ``distillation=True`` (consistency models, CD and CT): c_skip = s_d^2 / ((sigma - sigma_min)^2 + s_d^2),
    c_out = (sigma - sigma_min) s_d / sqrt(sigma^2 + s_d^2), so that D(x, sigma_min) = x; ``False`` (their EDM
    teachers): EDM's c_skip = s_d^2 / (sigma^2 + s_d^2), c_out = sigma s_d / sqrt(sigma^2 + s_d^2). Both use
    c_in = 1 / sqrt(sigma^2 + s_d^2) and the time input c_noise = 1000 * 0.25 * ln(sigma + 1e-44) in float32.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, sigma_data: float = 0.5, distillation: bool = True,
                 learn_sigma: bool = False, **unet_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, learn_sigma, unet_kwargs)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)
        self.distillation = bool(distillation)

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for sigma [N] (float32)."""
        sd = self.sigma_data
        c_in = 1 / (sigma**2 + sd**2) ** 0.5
        if self.distillation:
            c_skip = sd**2 / ((sigma - self.sigma_min) ** 2 + sd**2)
            c_out = (sigma - self.sigma_min) * sd / (sigma**2 + sd**2) ** 0.5
        else:
            c_skip = sd**2 / (sigma**2 + sd**2)
            c_out = sigma * sd / (sigma**2 + sd**2) ** 0.5
        c_noise = 1000 * 0.25 * torch.log(sigma + 1e-44)
        return c_skip, c_out, c_in, c_noise

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = self._sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in self.coefficients(sigma))
        out = self._run(c_in * x, c_noise.reshape(-1), sigma, class_labels)
        return c_skip * x + c_out * out

    def extra_repr(self) -> str:
        return (f"distillation={self.distillation}, sigma=[{self.sigma_min:g}, {self.sigma_max:g}], "
                f"sigma_data={self.sigma_data:g}, label_dim={self.label_dim}")


#: the denoiser classes of this module, by name (for presets and checkpoints)
OPENAI_PRECOND_CLASSES: dict[str, type[nn.Module]] = {"ADMPrecond": ADMPrecond, "CMPrecond": CMPrecond,
                                                       "LDMPrecond": LDMPrecond}

__all__ = ["OPENAI_PRECOND_CLASSES", "SCHEDULES", "ADMPrecond", "AttentionBlock", "BasicTransformerBlock",
           "CMPrecond", "ClassEmbedder", "CrossAttention", "Downsample", "GroupNorm32", "LDMPrecond", "OpenAIUNet",
           "ResBlock", "SpatialTransformer", "TimestepEmbedSequential", "Upsample"]
