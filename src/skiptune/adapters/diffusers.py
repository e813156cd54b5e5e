"""Adapter for diffusers' ``UNet2DModel`` and ``UNet2DConditionModel`` (optional dependency).

In these UNets the encoder collects a tuple of residuals (the ``conv_in`` output, then every down
block's resnet outputs and downsampler output) and each decoder resnet pops the last one:
``resnet(cat([hidden, res]), temb)``. The concatenation is written inline in the up blocks' forward,
so the hook point of site i is that resnet: a forward pre-hook replaces the trailing ``skip_channels``
of its input. Nothing in diffusers is patched or flagged; every hook is a removable handle.

Sites are ordered as popped (innermost first): ``up_blocks.0.resnets.0``, ``up_blocks.0.resnets.1``,
... Widths are read from the modules (the encoder residuals' widths and each resnet's
``in_channels``) and cross-checked against each other; an up block of another kind raises an error.
The decoder stage of a site (used by FreeU) is the index of its up block, as diffusers counts them.

Noise level. Sigma-dependent rules need sigma (REFERENCE.md Sec. 2: sigma_t = sqrt(1/abar_t - 1)).
Our denoisers (:class:`skiptune.io.diffusers.DiffusersDenoiser`, :class:`~skiptune.sampling.VPDenoiser`)
publish it. When a diffusers pipeline calls the UNet directly with a timestep, a pre-hook on the UNet
converts the timestep with the schedule recorded by :func:`attach_schedule` (pass the pipeline's
scheduler), or, if none was recorded, DDPM's linear betas 1e-4..0.02 over ``num_train_timesteps``
(the UNet config's value, else 1000) with a warning. A sigma already published by the caller wins,
so nothing is published twice. UNets with Fourier time features (``time_embedding_type='fourier'``,
score-SDE VE models) receive sigma itself as their timestep, which is then published as is.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from skiptune.adapters.base import (
    MODES,
    Adapter,
    JoinFn,
    ScaleFn,
    SkipSite,
    hook_skip_channels,
    register_adapter,
)
from skiptune.core.errors import InputError
from skiptune.core.schedules import alphas_cumprod, sigmas_from_alphas_cumprod
from skiptune.core.sigma import current_publication, publish_sigma
from skiptune.nets.staged import Keep, StagedUNet, stop_encoder

INSTALL_HINT = "pip install 'skiptune[diffusers]'"
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
# blocks whose forward pops one residual per resnet and feeds cat([hidden, res]) to that resnet
UP_BLOCKS = frozenset({"UpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D",
                       "ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D"})
# blocks that push one residual per resnet, then one for the downsampler if any (same width)
DOWN_BLOCKS = frozenset({"DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D", "SkipDownBlock2D",
                         "AttnSkipDownBlock2D", "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"})
#: the schedule assumed when none is attached: DDPM (Ho et al. 2020), diffusers' DDPMScheduler defaults
DEFAULT_SCHEDULE = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000}


def require_diffusers():
    """The diffusers module, or ImportError naming the extra to install."""
    try:
        import diffusers
    except ImportError:
        raise ImportError(f"this needs the optional diffusers package: {INSTALL_HINT}") from None
    return diffusers


def _is_diffusers_unet(m: Any) -> bool:
    if not isinstance(m, nn.Module) or "diffusers" not in sys.modules:
        return False
    if not any(c.__module__.startswith("diffusers.") for c in type(m).__mro__):
        return False  # decided without touching (lazily importing) diffusers' model classes
    import diffusers

    return isinstance(m, (diffusers.UNet2DModel, diffusers.UNet2DConditionModel))


def diffusers_unet(net: nn.Module) -> nn.Module | None:
    """The diffusers UNet inside ``net`` (the net itself or its ``model``), else None."""
    for m in (net, getattr(net, "model", None)):
        if _is_diffusers_unet(m):
            return m
    return None


# --- where the skips are -------------------------------------------------------------------------

@dataclass(frozen=True)
class _Join:
    site: SkipSite
    block: int  # up block index = decoder stage
    layer: int  # resnet index inside the up block


def _sample_size(unet: nn.Module) -> int | None:
    size = getattr(unet.config, "sample_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if size else None


def _unsupported(unet: nn.Module, where: str, kind: str) -> ValueError:
    return ValueError(f"{type(unet).__name__}: {where} is a {kind}, whose skips skiptune cannot place; supported "
                      f"up blocks: {', '.join(sorted(UP_BLOCKS))}; down blocks: {', '.join(sorted(DOWN_BLOCKS))}")


def _layout(unet: nn.Module) -> list[_Join]:
    """The joins of a diffusers UNet, innermost first, with widths derived from the modules."""
    size = _sample_size(unet)
    # encoder residuals: (channels, number of downsamplings before it)
    pushed = [(unet.conv_in.out_channels, 0)]
    level = 0
    for b, block in enumerate(unet.down_blocks):
        if type(block).__name__ not in DOWN_BLOCKS:
            raise _unsupported(unet, f"down_blocks.{b}", type(block).__name__)
        pushed += [(r.out_channels, level) for r in block.resnets]
        if getattr(block, "downsamplers", None) is not None:
            level += 1
            pushed.append((block.resnets[-1].out_channels, level))
    width = pushed[-1][0]
    if unet.mid_block is not None:
        width = unet.mid_block.resnets[-1].out_channels
    joins: list[_Join] = []
    for b, block in enumerate(unet.up_blocks):
        if type(block).__name__ not in UP_BLOCKS:
            raise _unsupported(unet, f"up_blocks.{b}", type(block).__name__)
        for j, resnet in enumerate(block.resnets):
            name = f"up_blocks.{b}.resnets.{j}"
            if not pushed:
                raise InputError(f"{type(unet).__name__}: {name} pops a residual that the encoder never pushed")
            skip, lev = pushed.pop()
            if resnet.in_channels != width + skip:
                raise InputError(f"{type(unet).__name__}: {name} takes {resnet.in_channels} channels, but the decoder "
                                 f"carries {width} and the popped residual has {skip}; cannot place this skip")
            res = size
            for _ in range(lev if size else 0):
                res = (res + 1) // 2
            joins.append(_Join(SkipSite(len(joins), name, res or 0, skip, width), b, j))
            width = resnet.out_channels
    if pushed:
        raise InputError(f"{type(unet).__name__}: {len(pushed)} encoder residuals are never popped by the decoder")
    return joins


# --- noise schedule: timestep -> sigma ----------------------------------------------------------

_SCHEDULES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WARNED: weakref.WeakSet = weakref.WeakSet()


def schedule_from_config(config: Mapping[str, Any]) -> torch.Tensor:
    """abar_t (float64, t = 0..T-1) from a diffusers scheduler config (``scheduler_config.json``).

    Reads ``num_train_timesteps``, ``beta_schedule`` (``linear``, ``scaled_linear``,
    ``squaredcos_cap_v2``), ``beta_start``/``beta_end`` and ``trained_betas``; missing keys take
    diffusers' defaults (linear 1e-4..0.02, T = 1000). Zero terminal SNR (``rescale_betas_zero_snr``)
    has sigma_T = inf and is refused.
    """
    if config.get("rescale_betas_zero_snr"):
        raise InputError("schedules rescaled to zero terminal SNR have an infinite sigma at the last timestep and "
                         "are not supported")
    cfg = {**DEFAULT_SCHEDULE, **{k: v for k, v in config.items() if v is not None}}
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float64)
        return torch.as_tensor(np.cumprod(1 - betas))
    names = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
    kind = cfg["beta_schedule"]
    if kind not in names:
        raise InputError(f"unsupported beta_schedule {kind!r}; known: {', '.join(names)}")
    return alphas_cumprod(int(cfg["num_train_timesteps"]), names[kind], float(cfg["beta_start"]),
                          float(cfg["beta_end"]))


def attach_schedule(unet: nn.Module, schedule: Any) -> torch.Tensor:
    """Record the noise schedule used to turn ``unet``'s timesteps into sigma; returns abar (float64).

    ``schedule`` is a diffusers scheduler (e.g. ``pipe.scheduler``; its config is read), a scheduler
    config mapping, or a 1-D tensor/array of ``alphas_cumprod``. The record lives outside the UNet
    (nothing is set on it) and disappears with it.
    """
    target = diffusers_unet(unet)
    if target is None:
        raise InputError(f"attach_schedule needs a diffusers UNet2DModel/UNet2DConditionModel, got "
                         f"{type(unet).__name__}")
    if isinstance(schedule, Mapping):
        abar = schedule_from_config(schedule)
    elif isinstance(getattr(schedule, "config", None), Mapping):
        try:
            abar = schedule_from_config(schedule.config)
        except ValueError:
            if getattr(schedule, "alphas_cumprod", None) is None:
                raise
            abar = torch.as_tensor(schedule.alphas_cumprod).to(torch.float64)
    else:
        abar = torch.as_tensor(schedule, dtype=torch.float64)
    abar = abar.detach().cpu().to(torch.float64).reshape(-1)
    if abar.numel() < 2 or not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
        raise InputError("alphas_cumprod must hold at least 2 values in (0, 1), strictly decreasing in t")
    _SCHEDULES[target] = abar
    return abar


def unet_schedule(unet: nn.Module) -> tuple[torch.Tensor, bool]:
    """``(alphas_cumprod, attached)``: the recorded schedule, or the default one with ``attached=False``."""
    target = diffusers_unet(unet) or unet
    if target in _SCHEDULES:
        return _SCHEDULES[target], True
    return schedule_from_config({**DEFAULT_SCHEDULE, "num_train_timesteps": _train_steps(target)}), False


def _train_steps(unet: nn.Module) -> int:
    return getattr(getattr(unet, "config", None), "num_train_timesteps", None) or 1000


def _interpolate(log_sigmas: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """exp of log sigma interpolated linearly at (fractional) timesteps t, clamped to [0, T-1]; t's device."""
    last = log_sigmas.shape[0] - 1
    t = t.detach().to(torch.float64).reshape(-1).clamp(0, last)
    lo = t.floor().long().clamp(max=last - 1)
    w = t - lo
    return ((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]).exp()


def sigma_at_timestep(abar: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """sigma_t = sqrt(1/abar_t - 1) at (possibly fractional) timesteps, float64, 1-D, on t's device.

    Fractional t interpolates log sigma linearly between neighbouring trained timesteps (the inverse
    of k-diffusion's ``sigma_to_t``); t is clamped to [0, T-1].
    """
    t = torch.as_tensor(t)
    return _interpolate(sigmas_from_alphas_cumprod(abar).log().to(t.device), t)


class _SigmaTable:
    """log sigma_t of one UNet's schedule, as Python numbers and per device, made once (not per call)."""

    def __init__(self, abar: torch.Tensor, attached: torch.Tensor | None, steps: int):
        self.attached, self.steps = attached, steps  # what the table was made from
        self.cpu = sigmas_from_alphas_cumprod(abar).log()
        self.numbers = self.cpu.tolist()
        self.devices: dict[torch.device, torch.Tensor] = {self.cpu.device: self.cpu}

    def on(self, device: torch.device) -> torch.Tensor:
        table = self.devices.get(device)
        if table is None:
            table = self.devices[device] = self.cpu.to(device)
        return table

    def at(self, t: float) -> float:
        """sigma at a timestep given as a Python number (same interpolation as :func:`sigma_at_timestep`)."""
        last = len(self.numbers) - 1
        t = min(max(t, 0.0), float(last))
        lo = min(int(math.floor(t)), last - 1)
        w = t - lo
        return math.exp((1 - w) * self.numbers[lo] + w * self.numbers[lo + 1])


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sigma_table(unet: nn.Module) -> _SigmaTable:
    """The table of ``unet``'s current schedule (remade only when :func:`attach_schedule` changed it)."""
    attached, steps = _SCHEDULES.get(unet), _train_steps(unet)
    table = _TABLES.get(unet)
    if table is None or table.attached is not attached or (attached is None and table.steps != steps):
        abar = attached if attached is not None else unet_schedule(unet)[0]
        table = _TABLES[unet] = _SigmaTable(abar, attached, steps)
    return table


def _timestep_to_sigma(unet: nn.Module, t: Any) -> float | torch.Tensor:
    """sigma of a timestep argument: a Python number for a number, else a float64 tensor on t's device.

    Never reads a tensor on the host (this runs in a hook, once per network call).
    """
    number = isinstance(t, numbers.Real) and not isinstance(t, torch.Tensor)
    if getattr(unet.config, "time_embedding_type", None) == "fourier":
        return float(t) if number else torch.as_tensor(t).detach().to(torch.float64).reshape(-1)
    if unet not in _SCHEDULES and unet not in _WARNED:
        _WARNED.add(unet)
        warnings.warn(f"no noise schedule attached to this {type(unet).__name__}: sigma-dependent rules assume DDPM's "
                      f"linear betas 1e-4..0.02 over {_train_steps(unet)} steps; call skiptune.adapters.diffusers."
                      "attach_schedule(unet, pipe.scheduler) to use the pipeline's", stacklevel=3)
    table = _sigma_table(unet)
    if number:
        return table.at(float(t))
    t = torch.as_tensor(t)
    return _interpolate(table.on(t.device), t)


# --- the adapter ---------------------------------------------------------------------------------

@register_adapter
class DiffusersUNetAdapter(Adapter):
    """Sites are the up blocks' resnets; all three modes of the core:

    - ``concat``: pre-hook on the resnet, scaling the skip channels of ``cat([hidden, res])``;
    - ``residual``: pre-hook on the resnet's ``conv_shortcut`` (1x1 conv, present when the join
      changes the width), scaling its skip channels only;
    - ``norm``: pre-hook on the resnet's ``norm1``, scaling its skip channels only.
    """

    name = "diffusers UNet2DModel/UNet2DConditionModel"
    modes = MODES

    @classmethod
    def matches(cls, net):
        return diffusers_unet(net) is not None

    def sites(self, net):
        return [j.site for j in _layout(diffusers_unet(net))]

    def stages(self, net):
        return [j.block for j in _layout(diffusers_unet(net))]

    def _resnet(self, net, site: SkipSite) -> nn.Module:
        return diffusers_unet(net).get_submodule(site.name)

    def attach(self, net, site: SkipSite, mode: str, scale: ScaleFn) -> list[RemovableHandle]:
        resnet = self._resnet(net, site)
        target = {"concat": resnet, "residual": getattr(resnet, "conv_shortcut", None),
                  "norm": getattr(resnet, "norm1", None)}[mode]
        if target is None:
            raise InputError(f"site {site.index} ({site.name}) has no inner shortcut conv to scale in mode '{mode}' "
                             "(the join does not change the resnet's width); use mode 'concat'")
        return hook_skip_channels(target, site.main_channels, scale)

    def attach_join(self, net, site: SkipSite, fn: JoinFn) -> list[RemovableHandle]:
        start = site.main_channels

        def join_hook(module, args):
            x = args[0]
            u, d = fn(x[:, :start], x[:, start:])
            return (torch.cat([u, d], dim=1),) + tuple(args[1:])
        return [self._resnet(net, site).register_forward_pre_hook(join_hook)]

    def staged(self, net, kind: str):
        return _stages_for(diffusers_unet(net))

    def attach_sigma(self, net) -> list[RemovableHandle]:
        unet = diffusers_unet(net)
        open_scopes: list = []
        table = _sigma_table(unet)  # made now, outside the network call
        for p in unet.parameters():
            table.on(p.device)
            break

        def publish(module, args, kwargs):
            scope = None
            t = args[1] if len(args) > 1 else kwargs.get("timestep")
            if current_publication() is None and t is not None:
                scope = publish_sigma(_timestep_to_sigma(unet, t))
                scope.__enter__()
            open_scopes.append(scope)

        def unpublish(module, args, kwargs, output):
            scope = open_scopes.pop() if open_scopes else None
            if scope is not None:
                scope.__exit__(None, None, None)

        return [unet.register_forward_pre_hook(publish, with_kwargs=True),
                unet.register_forward_hook(unpublish, with_kwargs=True, always_call=True)]


# --- stages, for feature-cache policies -----------------------------------------------------------

class _UNet2DStages(StagedUNet):
    """A diffusers ``UNet2DModel`` or ``UNet2DConditionModel`` run in the stages of :mod:`skiptune.nets.staged`,
    from its own modules.

    Its forward mirrors the UNet's (time, class and cross-attention conditioning, ``conv_in``, down blocks, mid
    block, up blocks, output convolution; not ControlNet residuals, added embeddings or attention masks) and is
    what :class:`~skiptune.io.diffusers.DiffusersDenoiser` calls while a
    cache policy is attached; diffusers' forward itself is never replaced. Up blocks are diffusers modules that
    pop several skips each, so a partial decoder pass can start only at an up block's first resnet
    (:meth:`check_start`); the encoder runs whole down blocks and drops residuals beyond the ones asked for.
    """

    def __init__(self, unet: nn.Module):
        self._unet = weakref.ref(unet)
        self._joins = _layout(unet)

    @property
    def unet(self) -> nn.Module:
        return self._unet()

    def check_start(self, site: int) -> None:
        """A partial pass may start (and a feature be kept) only where an up block begins."""
        starts = [j.site.index for j in self._joins if j.layer == 0]
        if site not in starts:
            n = len(self._joins)
            raise InputError(f"diffusers up blocks pop several skips each, so a partial pass can only resume at an up "
                             f"block's first resnet; deepcache branches available here: "
                             f"{', '.join(str(n - 1 - s) for s in sorted(starts, reverse=True))}")

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, **other) -> torch.Tensor:
        unet = self.unet
        cfg = unet.config
        if other:
            raise InputError(f"a cached diffusers UNet takes class_labels and encoder_hidden_states only, not "
                             f"{', '.join(sorted(other))}; drop --cache for this call")
        up = 2 ** len([b for b in unet.up_blocks if getattr(b, "upsamplers", None) is not None])
        if any(d % up for d in sample.shape[-2:]):
            raise InputError(f"a cached diffusers UNet needs a sample size divisible by {up}, got "
                             f"{tuple(sample.shape[-2:])}")
        if cfg.center_input_sample:
            sample = 2 * sample - 1.0
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        t = t * torch.ones(sample.shape[0], dtype=t.dtype, device=t.device)
        if self.conditional:
            emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=t), None)
            class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
            if class_emb is not None:
                emb = torch.cat([emb, class_emb], dim=-1) if cfg.class_embeddings_concat else emb + class_emb
            if unet.time_embed_act is not None:
                emb = unet.time_embed_act(emb)
        else:
            emb = unet.time_embedding(unet.time_proj(t).to(dtype=unet.dtype))
            if unet.class_embedding is not None:
                if class_labels is None:
                    raise InputError("this UNet2DModel is class-conditional: pass class_labels")
                if cfg.class_embed_type == "timestep":
                    class_labels = unet.time_proj(class_labels)
                emb = emb + unet.class_embedding(class_labels).to(dtype=unet.dtype)
        out = self._stages(sample, (emb, encoder_hidden_states), self._encode, self._decode)
        if unet.conv_norm_out is not None:
            out = unet.conv_act(unet.conv_norm_out(out))
        out = unet.conv_out(out)
        if getattr(cfg, "time_embedding_type", None) == "fourier":
            out = out / t.reshape(-1, *([1] * (out.dim() - 1)))
        return out

    @property
    def conditional(self) -> bool:
        return type(self.unet).__name__ == "UNet2DConditionModel"

    @staticmethod
    def _context(block: nn.Module, ctx: torch.Tensor | None) -> dict:
        return {"encoder_hidden_states": ctx} if getattr(block, "has_cross_attention", False) else {}

    def _encode(self, x: torch.Tensor, emb: tuple, pushes: int | None = None) -> tuple[torch.Tensor, list]:
        unet = self.unet
        temb, ctx = emb
        h = unet.conv_in(x)
        skips = [h]
        for block in unet.down_blocks:
            if stop_encoder(skips, pushes):
                break
            h, res = block(hidden_states=h, temb=temb, **self._context(block, ctx))
            skips += list(res)
        return h, skips if pushes is None else skips[:pushes]

    def _decode(self, h: torch.Tensor, skips: list, emb: tuple, start: int | None = None,
                keep: Keep | None = None) -> torch.Tensor:
        unet = self.unet
        temb, ctx = emb
        first = None if start is None else next(j.block for j in self._joins if j.site.index == start)
        kept = None if keep is None else next(j.block for j in self._joins if j.site.index == keep[0])
        if start is None and unet.mid_block is not None:
            h = unet.mid_block(h, temb, **self._context(unet.mid_block, ctx))
        for b, block in enumerate(unet.up_blocks):
            if first is not None and b < first:
                continue
            if b == kept:
                keep[1](h)
            n = len(block.resnets)
            res = tuple(skips[-n:])
            del skips[-n:]
            h = block(hidden_states=h, temb=temb, res_hidden_states_tuple=res, **self._context(block, ctx))
        return h


_STAGED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def staged_unet(unet: nn.Module) -> _UNet2DStages | None:
    """The stages of ``unet`` while a cache policy is attached to it (else None: call the UNet itself)."""
    stages = _STAGED.get(unet)
    return stages if stages is not None and stages.feature_cache is not None else None


def _stages_for(unet: nn.Module) -> _UNet2DStages:
    cfg = unet.config
    if getattr(cfg, "addition_embed_type", None) is not None or getattr(unet, "encoder_hid_proj", None) is not None:
        raise InputError(f"this {type(unet).__name__} takes added conditioning (addition_embed_type "
                         f"{cfg.addition_embed_type!r} or an encoder_hid_proj), which cached passes do not stage; "
                         "drop --cache for this model")
    for name, blocks in (("down_blocks", unet.down_blocks), ("up_blocks", unet.up_blocks)):
        for i, block in enumerate(blocks):
            if hasattr(block, "skip_conv"):
                raise InputError(f"{name}.{i} is a {type(block).__name__}, whose extra output path a partial pass "
                                 "cannot resume; drop --cache for this model")
    if unet not in _STAGED:
        _STAGED[unet] = _UNet2DStages(unet)
    return _STAGED[unet]
