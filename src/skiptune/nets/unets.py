"""EDM-compatible UNets: ``SongUNet`` (DDPM++ / NCSN++) and ``DhariwalUNet`` (ADM).

Constructor arguments, module names and parameter names match the public EDM checkpoints, so
their state dicts load with ``strict=True``. Each decoder concatenation of an encoder skip is an
explicit :class:`~skiptune.nets.layers.SkipJoin` module (parameter-free, so checkpoints are
unaffected), registered in ``self.joins`` in the order the skips are popped: innermost first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from skiptune.core.errors import InputError
from skiptune.nets.layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    SkipJoin,
    UNetBlock,
)
from skiptune.nets.staged import Keep, StagedUNet, stop_encoder


class _SkipUNet(StagedUNet, nn.Module):
    """Shared plumbing: the decoder's skip joins and the encoder/decoder traversal."""

    enc: nn.ModuleDict
    dec: nn.ModuleDict
    joins: nn.ModuleDict  # decoder block name -> SkipJoin, in pop order (innermost first)

    def _add_decoder_level(self, level: int, levels: int, res: int, cout: int, width: int, num_blocks: int,
                           stack: list[int], attention, bk: dict) -> int:
        """One decoder level: the bottleneck pair or an upsampling block, then ``num_blocks + 1``
        blocks that each pop one encoder skip through a :class:`SkipJoin`. Returns the output width."""
        if level == levels - 1:
            self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **bk)
            self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **bk)
        else:
            self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **bk)
        for idx in range(num_blocks + 1):
            skip = stack.pop()
            self.joins[f"{res}x{res}_block{idx}"] = SkipJoin(cout, skip, res)
            cin, cout = cout + skip, width
            self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attention(idx), **bk)
        return cout

    def _encode(self, x: torch.Tensor, emb: torch.Tensor, pushes: int | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                if stop_encoder(skips, pushes):
                    break
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        return x, skips

    def _decode(self, x: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor, start: int | None = None,
                keep: Keep | None = None) -> torch.Tensor:
        """The decoder (see :mod:`skiptune.nets.staged`); returns the output of its ``aux`` path if it has one."""
        joins = list(self.joins) if start is not None or keep is not None else None  # only for a cached pass
        first = None if start is None else joins[start]
        kept = None if keep is None else joins[keep[0]]
        aux = None
        tmp = None
        for name, block in self.dec.items():
            if first is not None:
                if name != first:
                    if "aux" in name:
                        raise InputError("this UNet's decoder accumulates an output path across levels "
                                         "(decoder_type='skip'), which a partial pass cannot resume; cache "
                                         "policies need decoder_type='standard'")
                    continue
                first = None
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if name == kept:
                    keep[1](x)
                join = self.joins[name] if name in self.joins else None
                if join is not None:
                    x = join(x, skips.pop())
                x = block(x, emb)
        return x if aux is None else aux

    def _embed_labels(self, emb: torch.Tensor, class_labels: torch.Tensor | None, scale: float) -> torch.Tensor:
        tmp = class_labels
        if tmp is None:
            raise InputError("this network is class-conditional: pass class_labels (one-hot, shape [N, label_dim])")
        if self.training and self.label_dropout:
            keep = torch.rand([tmp.shape[0], 1], device=tmp.device) >= self.label_dropout
            tmp = tmp * keep.to(tmp.dtype)
        return emb + self.map_label(tmp * scale)


class SongUNet(_SkipUNet):
    """DDPM++ (``embedding_type='positional'``) and NCSN++ (``'fourier'``, residual encoder) UNet
    of Song et al. 2021, in EDM's reimplementation layout."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[float] = (1, 1)):
        for value, allowed, what in ((embedding_type, ("fourier", "positional"), "embedding_type"),
                                     (encoder_type, ("standard", "skip", "residual"), "encoder_type"),
                                     (decoder_type, ("standard", "skip"), "decoder_type")):
            if value not in allowed:
                raise InputError(f"{what}={value!r} is not one of {allowed}")
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        bk = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                  resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                  init=init, init_zero=init_zero, init_attn=init_attn)

        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        self.enc = nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **bk)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **bk)
        skips = [_out_channels(b) for name, b in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        self.joins = nn.ModuleDict()
        stack = list(skips)
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            cout = self._add_decoder_level(level, len(channel_mult), res, cout, model_channels * mult, num_blocks,
                                           stack, lambda idx, r=res: idx == num_blocks and r in attn_resolutions, bk)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, **init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [cos, sin] -> [sin, cos]
        if self.map_label is not None:
            emb = self._embed_labels(emb, class_labels, math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        return self._stages(x, emb, self._encode, self._decode)


class DhariwalUNet(_SkipUNet):
    """The ADM UNet of Dhariwal & Nichol 2021, in EDM's reimplementation layout.

    ``channels_per_head`` is an addition (EDM fixes it at 64); it lets tiny test variants keep
    the attention layers of the full topology.
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0, channels_per_head: int = 64):
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        bk = dict(emb_channels=emb_channels, channels_per_head=channels_per_head, dropout=dropout,
                  init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                 init_weight=math.sqrt(label_dim)) if label_dim else None)

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **bk)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **bk)
        skips = [_out_channels(b) for b in self.enc.values()]

        self.dec = nn.ModuleDict()
        self.joins = nn.ModuleDict()
        stack = list(skips)
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            cout = self._add_decoder_level(level, len(channel_mult), res, cout, model_channels * mult, num_blocks,
                                           stack, lambda idx, r=res: r in attn_resolutions, bk)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, **init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = self._embed_labels(emb, class_labels, 1.0)
        emb = F.silu(emb)
        x = self._stages(x, emb, self._encode, self._decode)
        return self.out_conv(F.silu(self.out_norm(x)))


def _out_channels(module: nn.Module) -> int:
    return module.out_channels
