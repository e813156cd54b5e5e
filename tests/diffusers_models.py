"""Tiny random diffusers UNets for tests (diffusers must be importable), and a hand-written forward pass."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from conftest import randomize

SIZE = 8
CROSS_DIM = 8


def tiny_unet2d(layers: int = 1, mid: bool = True, **kw) -> UNet2DModel:
    """2 levels (8, 16 channels) at 8x8 and 4x4: a DownBlock2D/AttnDownBlock2D encoder."""
    net = UNet2DModel(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
                      layers_per_block=layers, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                      up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
                      mid_block_type="UNetMidBlock2D" if mid else None, **kw)
    return randomize(net, seed=1).eval()


def tiny_unet2d_cond(levels: int = 2, mid: bool = True) -> UNet2DConditionModel:
    """``levels`` levels; the innermost up block is an UpBlock2D, the others CrossAttnUpBlock2D (as in SD)."""
    channels = (8, 16, 16)[:levels]
    down = ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1)
    net = UNet2DConditionModel(sample_size=SIZE, in_channels=4, out_channels=4, block_out_channels=channels,
                               norm_num_groups=4, layers_per_block=1, down_block_types=down, up_block_types=up,
                               cross_attention_dim=CROSS_DIM, attention_head_dim=2,
                               mid_block_type="UNetMidBlock2DCrossAttn" if mid else None)
    return randomize(net, seed=2).eval()


def unet_inputs(unet, n: int = 2, seed: int = 0):
    """``(x, t, cond)``: a batch, per-sample timesteps, and encoder_hidden_states for conditional UNets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, unet.config.in_channels, SIZE, SIZE, generator=g)
    t = torch.tensor([10, 600, 999][:n])
    cond = {}
    if isinstance(unet, UNet2DConditionModel):
        cond["encoder_hidden_states"] = torch.randn(n, 3, CROSS_DIM, generator=g)
    return x, t, cond


def run(unet, x, t, cond) -> torch.Tensor:
    return unet(x, t, return_dict=False, **cond)[0]


def reference_forward(unet, x, t, cond, site: int, rho: float) -> torch.Tensor:
    """The UNet's forward pass written out by hand, with the ``site``-th popped residual multiplied by rho."""
    ehs = cond.get("encoder_hidden_states")

    def attend(block, i, h):
        attentions = getattr(block, "attentions", None)
        if not attentions:
            return h
        if ehs is None:
            return attentions[i](h)
        return attentions[i](h, encoder_hidden_states=ehs, return_dict=False)[0]

    emb = unet.time_embedding(unet.time_proj(t.expand(x.shape[0])).to(x.dtype))
    h = unet.conv_in(x)
    residuals = [h]
    for block in unet.down_blocks:
        for i, resnet in enumerate(block.resnets):
            h = attend(block, i, resnet(h, emb))
            residuals.append(h)
        if block.downsamplers is not None:
            h = block.downsamplers[0](h)
            residuals.append(h)
    if unet.mid_block is not None:
        h = unet.mid_block(h, emb) if ehs is None else unet.mid_block(h, emb, encoder_hidden_states=ehs)
    popped = 0
    for block in unet.up_blocks:
        for i, resnet in enumerate(block.resnets):
            d = residuals.pop()
            if popped == site:
                d = d * rho
            popped += 1
            h = attend(block, i, resnet(torch.cat([h, d], dim=1), emb))
        if block.upsamplers is not None:
            h = block.upsamplers[0](h)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))
