"""U-ViT (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models") and its denoiser.

U-ViT treats the time, the class label and the image patches as tokens of one transformer. The
first ``depth // 2`` blocks (``in_blocks``) push their outputs as long skips; after a ``mid_block``,
each of the ``depth // 2`` ``out_blocks`` pops one and fuses it with its input by a linear layer
over the concatenation of the tokens, ``x <- skip_linear(cat([x, skip], -1))``. Skip-Tuning (seed
003, Table 7) scales that skip before the concatenation, ``cat([x, rho skip])``; the concatenation
is a parameter-free :class:`TokenSkipJoin` module so that it can be hooked.

Parameter names follow the public U-ViT checkpoints (``pos_embed``, ``patch_embed.proj``,
``in_blocks.N.attn.qkv``, ``out_blocks.N.skip_linear``, ``decoder_pred``, ``final_layer``, ...), so
their state dicts load with ``strict=True``. The code is an independent implementation of the same
maths.

:class:`UViTPrecond` turns the noise-predicting U-ViT into a denoiser ``D(x, sigma) -> x0`` in the
EDM convention, for the two training schedules of the public models (see its docstring).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skiptune.core.errors import InputError
from skiptune.core.schedules import alphas_cumprod, sigmas_from_alphas_cumprod, vp_sigma, vp_sigma_inv
from skiptune.core.sigma import publish_sigma
from skiptune.nets.layers import SkipJoin
from skiptune.nets.staged import Keep, StagedUNet, stop_encoder


class TokenSkipJoin(SkipJoin):
    """``cat([x, skip], -1)`` over the feature dimension of token tensors [B, L, D]."""

    def forward(self, u: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.cat([u, d], dim=-1)


class TimestepEmbedding(nn.Module):
    """The sinusoidal time features of U-ViT: ``[cos(t w_j), sin(t w_j)]``, ``w_j = exp(-ln(max_period) j / half)``.

    The operations, their order and their dtypes are those of the public ``timestep_embedding``
    (baofff/U-ViT, ``libs/uvit.py``), so the features are bit-identical to the public ones: the
    frequencies are ``exp`` of a float32 ``arange`` times the float ``-ln(max_period)``, divided by
    ``half``, computed on the CPU and then moved to the input's device; the argument is the float32
    time times them. (``max_period ** (-j / half)`` is the same number mathematically but differs by
    a few ulp, which moves the features by up to 6.1e-5 for t in [0, 999] at embed_dim 1024 or 1152.)
    An odd ``dim`` gets a zero last feature.
    """

    def __init__(self, dim: int, max_period: int = 10000):
        super().__init__()
        self.dim = dim
        self.max_period = max_period

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
        args = timesteps[:, None].float() * freqs.to(device=timesteps.device)[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}"


class Attention(nn.Module):
    """Multi-head self-attention over tokens; the qkv features are laid out as [(q, k, v), head, channel]."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.to(torch.float32).unbind(0)  # [B, heads, L, c/heads]
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c/heads)) v
        return self.proj(a.transpose(1, 2).reshape(b, n, c).to(x.dtype))


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block, with an optional long-skip fusion in front.

    ``x <- skip_linear(cat([x, skip]))`` (out_blocks only), then ``x <- x + attn(norm1(x))`` and
    ``x <- x + mlp(norm2(x))``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 skip: bool = False, resolution: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.skip_join = TokenSkipJoin(dim, dim, resolution) if skip else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            if skip is None:
                raise InputError("this block fuses a long skip: pass the skip tokens")
            x = self.skip_linear(self.skip_join(x, skip))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: a stride-``patch_size`` convolution, flattened to [B, L, D]."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
            raise InputError(f"image size {tuple(x.shape[-2:])} is not divisible by the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class UViT(StagedUNet, nn.Module):
    """The U-ViT noise-prediction network ``eps = net(x, timesteps, y)``.

    Tokens: ``[label] + [time] + patches`` (the label token only when ``num_classes > 0``), plus a
    learned ``pos_embed``. The time token is the sinusoidal embedding of ``timesteps`` (cos half
    first, max period 10000), through a 2-layer SiLU MLP ``time_embed`` if ``mlp_time_embed``.
    The output tokens of the patches go through ``norm``, ``decoder_pred`` (to patch pixels),
    un-patchify and, if ``conv``, a 3x3 ``final_layer``. ``skip=False`` builds the variant without
    long skips. Arguments and defaults follow the public implementation.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 mlp_time_embed: bool = False, num_classes: int = -1, conv: bool = True, skip: bool = True):
        super().__init__()
        for name, value in (("img_size", img_size), ("patch_size", patch_size), ("in_chans", in_chans),
                            ("embed_dim", embed_dim), ("num_heads", num_heads)):
            if int(value) != value or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value}")
        if img_size % patch_size:
            raise InputError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if embed_dim % num_heads or embed_dim % 2:
            raise InputError(f"embed_dim {embed_dim} must be even and divisible by num_heads {num_heads}")
        if depth < 0:
            raise InputError(f"depth must be >= 0, got {depth}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.tokens_per_side = img_size // patch_size
        num_patches = self.tokens_per_side**2

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.map_time = TimestepEmbedding(embed_dim, max_period=10000)
        self.time_embed = nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(),
                                        nn.Linear(4 * embed_dim, embed_dim)) if mlp_time_embed else nn.Identity()
        if num_classes > 0:
            self.label_emb = nn.Embedding(num_classes, embed_dim)
        self.extras = 2 if num_classes > 0 else 1
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_patches, embed_dim))

        block = dict(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
        self.in_blocks = nn.ModuleList([Block(**block) for _ in range(depth // 2)])
        self.mid_block = Block(**block)
        self.out_blocks = nn.ModuleList([Block(**block, skip=skip, resolution=self.tokens_per_side)
                                         for _ in range(depth // 2)])
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, patch_size**2 * in_chans)
        self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated normal (std 0.02) for ``pos_embed`` and linear weights, zero linear biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, h*w, p*p*C] (patch pixels ordered row, column, channel) -> [B, C, h*p, w*p]."""
        b, p, c, h = x.shape[0], self.patch_size, self.in_chans, self.tokens_per_side
        return x.reshape(b, h, h, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h * p, h * p)

    def _encode(self, x: torch.Tensor, emb: None, pushes: int | None = None) -> tuple[torch.Tensor, list]:
        """The in-blocks, each pushing its tokens (time and label enter as tokens: ``emb`` is unused)."""
        skips = []
        for blk in self.in_blocks:
            if stop_encoder(skips, pushes):
                break
            x = blk(x)
            skips.append(x)
        return x, skips

    def _decode(self, x: torch.Tensor, skips: list, emb: None, start: int | None = None,
                keep: Keep | None = None) -> torch.Tensor:
        """The mid block, then the out-blocks, the first taking the last skip pushed (the innermost).
        Sites are the out-blocks, 0 = the first; ``start``/``keep`` as in :mod:`skiptune.nets.staged`."""
        if start is None:
            x = self.mid_block(x)
        for i, blk in enumerate(self.out_blocks):
            if start is not None and i < start:
                continue
            if keep is not None and i == keep[0]:
                keep[1](x)
            skip = skips.pop()
            x = blk(x, skip if blk.skip_linear is not None else None)
        return x

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise InputError(f"this U-ViT takes {self.img_size}x{self.img_size} inputs, got {tuple(x.shape[-2:])}")
        x = self.patch_embed(x)
        b = x.shape[0]
        t = torch.as_tensor(timesteps, device=x.device).reshape(-1).to(torch.float32)
        if t.numel() == 1:
            t = t.expand(b)
        tokens = [self.time_embed(self.map_time(t).to(x.dtype))[:, None]]
        if self.num_classes > 0:
            if y is None:
                raise InputError(f"this U-ViT is class-conditional: pass labels y in 0..{self.num_classes - 1}")
            tokens.insert(0, self.label_emb(y.reshape(-1).to(device=x.device, dtype=torch.long))[:, None])
        elif y is not None:
            raise InputError("this U-ViT is unconditional (num_classes <= 0): do not pass labels")
        x = torch.cat([*(tok.expand(b, -1, -1) for tok in tokens), x], dim=1) + self.pos_embed.to(x.dtype)

        x = self._stages(x, None, self._encode, self._decode)
        x = self.decoder_pred(self.norm(x))[:, self.extras:]
        return self.final_layer(self.unpatchify(x))


SCHEDULES = ("vp", "sd-discrete")


class UViTPrecond(nn.Module):
    """A noise-predicting U-ViT as an EDM-convention denoiser ``D(x, sigma) = x - sigma eps``.

    With x = y + sigma n the network sees the VP input ``x / sqrt(1 + sigma^2)`` (EDM Table 1,
    VP column: c_skip = 1, c_out = -sigma, c_in = 1/sqrt(1 + sigma^2)) and a time input that
    depends on how it was trained:

    - ``schedule="vp"``: the continuous VP SDE with beta(t) = beta_min + beta_d t on t in [0, 1]
      (the public U-ViT's ``sde.VPSDE``, beta 0.1..20), sigma(t)^2 = exp(beta_d t^2/2 + beta_min t) - 1,
      time input 999 t(sigma); the range is [sigma(epsilon_t), sigma(1)]. Used by the public
      U-ViT-L/2 ImageNet-256 model (``train_ldm.py``).
    - ``schedule="sd-discrete"``: Stable Diffusion's 1000 betas, linspace(sqrt(beta_start),
      sqrt(beta_end), 1000)^2, abar_n = prod_{m<=n} (1 - beta_m), time input n in 1..1000 (the
      public ``train_ldm_discrete.py``; U-ViT-H/2 ImageNet-256); the range is [sigma_1, sigma_1000].
      Between trained levels the time input is, with ``time_input="interpolate"`` (the default), the
      continuous N t(sigma) that U-ViT's own DPM-Solver sampling feeds the network (log alpha linear in t
      between the levels t_n = n/N, DPM-Solver's discrete schedule), so trained levels give n exactly;
      with ``time_input="round"``, the nearest trained level in log sigma.

    Class labels are one-hot rows [N, label_dim] (as our samplers pass them) or integer indices.
    ``null_label=True`` means the network has one more class, ``label_dim``, trained as "no label"
    for classifier-free guidance (the public ``num_classes=1001``); it is used when no labels are
    given. ``latent_scale_factor`` marks a latent model: its samples are VAE latents multiplied by
    that factor (0.18215 for the Stable Diffusion autoencoder), not images.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, null_label: bool = False,
                 schedule: str = "vp", epsilon_t: float = 1e-5, beta_min: float = 0.1, beta_d: float = 19.9,
                 beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000,
                 latent_scale_factor: float | None = None, time_input: str = "interpolate", **model_kwargs):
        super().__init__()
        if schedule not in SCHEDULES:
            raise InputError(f"unknown U-ViT schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
        if time_input not in ("interpolate", "round"):
            raise InputError(f"time_input must be 'interpolate' or 'round', got {time_input!r}")
        self.time_input = time_input
        if label_dim < 0 or (null_label and label_dim == 0):
            raise InputError(f"label_dim must be >= 0 (and > 0 with null_label), got {label_dim}")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.null_label = null_label
        self.schedule = schedule
        self.latent_scale_factor = latent_scale_factor
        num_classes = label_dim + (1 if null_label else 0) if label_dim else -1
        self.model = UViT(img_size=img_resolution, in_chans=img_channels, num_classes=num_classes, **model_kwargs)
        if schedule == "vp":
            self.beta_min, self.beta_d = beta_min, beta_d
            self.sigma_min = float(vp_sigma(epsilon_t, beta_min, beta_d))
            self.sigma_max = float(vp_sigma(1.0, beta_min, beta_d))
            self.register_buffer("alphas_cumprod", None, persistent=False)
            self.register_buffer("sigmas", None, persistent=False)
        else:
            with torch.device("cpu"):  # a fixed schedule, also when the network is built on the meta device
                abar = alphas_cumprod(num_train_timesteps, "scaled_linear", beta_start, beta_end)
                sig = sigmas_from_alphas_cumprod(abar)
            self.sigma_min, self.sigma_max = float(sig[0]), float(sig[-1])
            self.register_buffer("alphas_cumprod", abar, persistent=False)  # abar_n at index n - 1
            self.register_buffer("sigmas", sig, persistent=False)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's time input for each sigma (float32, shape [N])."""
        sigma = sigma.reshape(-1)
        if self.schedule == "vp":
            t = vp_sigma_inv(sigma.detach().to(torch.float64).cpu().numpy(), self.beta_min, self.beta_d)
            return torch.as_tensor(999.0 * np.asarray(t), device=sigma.device).to(torch.float32)
        if self.time_input == "round":
            return (self._nearest_index(sigma) + 1).to(device=sigma.device, dtype=torch.float32)
        return self._continuous_time(sigma).to(device=sigma.device, dtype=torch.float32)

    def _continuous_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """N t(sigma) of DPM-Solver's discrete schedule: log alpha_t linear in t between t_n = n/N (on the device,
        no host round trip); clamped to the trained range [1, N]."""
        big_n = self.alphas_cumprod.shape[0]
        neg_la = -0.5 * self.alphas_cumprod.log()  # -log alpha at t_n, increasing in n
        x = 0.5 * torch.log1p(sigma.to(device=neg_la.device, dtype=torch.float64) ** 2)  # -log alpha of sigma
        hi = torch.searchsorted(neg_la, x).clamp(1, big_n - 1)
        frac = ((x - neg_la[hi - 1]) / (neg_la[hi] - neg_la[hi - 1])).clamp(0, 1)
        lo_t = hi.to(torch.float64)  # level hi - 1 (0-based) is n = hi
        t = torch.where(x <= neg_la[0], torch.ones_like(x), lo_t + frac)
        return t.clamp(1.0, float(big_n))

    def _nearest_index(self, sigma: torch.Tensor) -> torch.Tensor:
        log_s = sigma.to(device=self.sigmas.device, dtype=torch.float64).reshape(-1, 1).log()
        return (log_s - self.sigmas.log().reshape(1, -1)).abs().argmin(dim=1)

    def round_sigma(self, sigma):
        """The trained sigma nearest to ``sigma`` (discrete schedule); unchanged for the continuous one."""
        sigma = torch.as_tensor(sigma)
        if self.schedule == "vp":
            return sigma
        return self.sigmas[self._nearest_index(sigma)].reshape(sigma.shape).to(sigma.dtype)

    def labels(self, class_labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
        """Integer labels for the network (None for an unconditional one)."""
        if not self.label_dim:
            return None
        if class_labels is None:
            if not self.null_label:
                raise InputError("this U-ViT is class-conditional without a null label: pass class_labels")
            return torch.full((n,), self.label_dim, dtype=torch.long, device=device)
        y = torch.as_tensor(class_labels, device=device)
        if y.is_floating_point():
            if y.ndim != 2 or y.shape[1] != self.label_dim:
                raise InputError(f"one-hot class_labels must have shape [N, {self.label_dim}], got {tuple(y.shape)}")
            y = y.argmax(dim=1)
        y = y.reshape(-1).to(torch.long)
        if y.numel() == 1:
            y = y.expand(n)
        return y

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                **model_kwargs) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        y = self.labels(class_labels, x.shape[0], x.device)
        c_in = (1 / (sigma**2 + 1).sqrt()).reshape(-1, 1, 1, 1)
        dtype = next(self.model.parameters()).dtype
        with publish_sigma(sigma):
            eps = self.model((c_in * x).to(dtype), self.timestep(sigma), y, **model_kwargs)
        return x - sigma.reshape(-1, 1, 1, 1) * eps.to(torch.float32)

    def extra_repr(self) -> str:
        return (f"schedule={self.schedule}, sigma=[{self.sigma_min:.4g}, {self.sigma_max:.4g}], "
                f"label_dim={self.label_dim}, null_label={self.null_label}")


__all__ = ["SCHEDULES", "Attention", "Block", "PatchEmbed", "TimestepEmbedding", "TokenSkipJoin", "UViT",
           "UViTPrecond"]
