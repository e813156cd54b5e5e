"""Generate images from a network with a sampler and a Skip-Tuning rule, seed by seed.

Sample i depends only on seed i (its latents, its class label and any sampler noise come from one
generator per seed), so any split of a seed range into batches or processes gives the same images.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from skiptune.core.denoiser import DenoiserInfo
from skiptune.core.errors import InputError
from skiptune.sampling import (
    DEFAULT_END,
    ENDS,
    SAMPLERS,
    CFGDenoiser,
    EDMDenoiser,
    SeedNoise,
    discrete_sigmas,
    discrete_time_uniform_sigmas,
    discrete_timesteps,
    make_sigmas,
    nfe_for_sigmas,
    nfe_for_steps,
    parse_seeds,
    sample,
)
from skiptune.sampling import steps_for_nfe as _steps_for_nfe
from skiptune.sampling.samplers import check_sampler_options
from skiptune.skip import CachePolicy, FeatureCache, FreeU, FreeUConfig, as_rule, skip_tuning

DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX = 0.002, 80.0
#: network precision: float32, or mixed precision (autocast) for the network call only
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Grids on the trained timesteps of a discrete-time network (one with ``alphas_cumprod``, e.g.
#: ``DDPMPrecond``): name -> :func:`~skiptune.sampling.discrete_timesteps` spacing. ``discrete`` is
#: DDIM's uniform skip ``t = 0, T/n, 2T/n, ...`` (diffusers "leading"), then a last step to sigma = 0.
DISCRETE_GRIDS = {"discrete": "leading", "discrete-trailing": "trailing"}
#: Grids on the noise schedule of a discrete-time network that are continuous in time (and so end at
#: sigma_min or 0 like the continuous grids): DPM-Solver's time-uniform steps of U-ViT and LDM sampling.
SCHEDULE_GRIDS = ("discrete-time-uniform",)
_warned_cpu_autocast = False  # the bf16/fp16-on-CPU warning is given once per process


@dataclass(frozen=True)
class SamplingSpec:
    """Which sampler, how many evaluations, on which sigma grid.

    Give ``nfe`` (converted to steps exactly, or a ValueError saying which NFEs the sampler can hit)
    or ``steps``. ``sigma_min``/``sigma_max`` default to the network's trained range where it has a
    finite one, else EDM's 0.002..80. ``options`` go to the sampler (e.g. ``order``, ``variant``); names
    the sampler does not take, or values of the wrong type, are refused on construction.

    ``end`` says where a continuous grid ends: ``"zero"`` (``steps`` intervals, the last one to sigma = 0,
    as EDM's Heun) or ``"sigma_min"`` (``steps`` solver steps ending at sigma_min, as the official UniPC
    and DPM-Solver code and diff-sampler); None takes the sampler's reference convention
    (:data:`~skiptune.sampling.samplers.DEFAULT_END`). The option ``denoise_to_zero`` adds a final
    x = D(x, sigma_min) (one more NFE) to a grid ending at sigma_min. The discrete grids always end at 0.

    ``guidance`` W is classifier-free guidance D = D_u + W (D_c - D_u) (Ho & Salimans' 1 + w; W = 1 is
    no guidance and is stored as None): every evaluation then calls the network twice, once with the
    class and once with the network's null label (U-ViT's ``scale`` s is W = 1 + s). Only networks with
    a trained null label (:attr:`~skiptune.core.denoiser.DenoiserInfo.null_label`) take it.
    """

    sampler: str = "heun"
    nfe: int | None = None
    steps: int | None = None
    grid: str = "edm"
    sigma_min: float | None = None
    sigma_max: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    end: str | None = None
    guidance: float | None = None

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r}; known: {', '.join(SAMPLERS)}")
        if (self.nfe is None) == (self.steps is None):
            raise InputError("give exactly one of nfe and steps")
        for name in ("nfe", "steps"):
            v = getattr(self, name)
            if v is not None and (int(v) != v or v < 1):
                raise InputError(f"{name} must be an integer >= 1, got {v}")
        check_sampler_options(self.sampler, self.options)  # unknown options fail here, before any work
        if self.end is not None and self.end not in ENDS:
            raise InputError(f"end must be one of {', '.join(ENDS)} (where the sigma grid ends), got {self.end!r}")
        if self.end == "sigma_min" and self.grid in DISCRETE_GRIDS:
            raise InputError(f"grid {self.grid!r} is a discrete-time grid, which ends at sigma = 0; drop end=sigma_min "
                             "or use a continuous grid such as edm")
        if self.guidance is not None:
            g = self.guidance
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
                raise InputError(f"guidance must be a finite number >= 0 (1 = no guidance), got {g!r}")
            object.__setattr__(self, "guidance", None if float(g) == 1.0 else float(g))
        self.resolved_steps  # noqa: B018 -- an NFE the sampler cannot hit on this grid fails here, naming those it can

    @property
    def resolved_end(self) -> str:
        """Where the grid ends: ``end`` if given, else the sampler's reference convention (discrete grids: 0)."""
        if self.grid in DISCRETE_GRIDS:
            return "zero"
        return self.end if self.end is not None else DEFAULT_END[self.sampler]

    @property
    def resolved_steps(self) -> int:
        """The number of grid intervals: ``steps``, or the count that gives exactly ``nfe`` evaluations."""
        if self.steps is not None:
            return self.steps
        return _steps_for_nfe(self.sampler, self.nfe, final_zero=self.resolved_end == "zero",
                              denoise_to_zero=bool(self.options.get("denoise_to_zero", False)))

    @property
    def resolved_nfe(self) -> int:
        """The exact number of network evaluations of one sample."""
        if self.nfe is not None:
            return self.nfe
        return nfe_for_steps(self.sampler, self.steps, final_zero=self.resolved_end == "zero",
                             denoise_to_zero=bool(self.options.get("denoise_to_zero", False)))

    def sigma_range(self, net: nn.Module | None = None) -> tuple[float, float]:
        lo = self.sigma_min
        hi = self.sigma_max
        info = None if net is None else DenoiserInfo.of(net)
        if lo is None:
            lo = info.sigma_min if info is not None and info.sigma_min > 0 else DEFAULT_SIGMA_MIN
        if hi is None:
            hi = info.sigma_max if info is not None and math.isfinite(info.sigma_max) else DEFAULT_SIGMA_MAX
        if not 0 < lo < hi:
            raise InputError(f"need 0 < sigma_min < sigma_max, got {lo}, {hi}")
        return lo, hi

    def sigmas(self, net: nn.Module | None = None) -> torch.Tensor:
        steps = self.resolved_steps
        if self.grid in DISCRETE_GRIDS:  # the network's own timesteps; sigma_min/sigma_max do not apply
            abar = None if net is None else DenoiserInfo.of(net).alphas_cumprod
            if abar is None:
                raise InputError(f"grid {self.grid!r} needs a discrete-time network (one with alphas_cumprod, e.g. "
                                 "DDPMPrecond); use a continuous grid such as edm for this model")
            return discrete_sigmas(abar.cpu(), discrete_timesteps(len(abar), steps, DISCRETE_GRIDS[self.grid]))
        if self.grid in SCHEDULE_GRIDS:
            abar = None if net is None else DenoiserInfo.of(net).alphas_cumprod
            if abar is None:
                raise InputError(f"grid {self.grid!r} needs a discrete-time network (one with alphas_cumprod, e.g. "
                                 "the U-ViT ImageNet-256 H model); use a continuous grid such as edm for this model")
            if self.resolved_end == "sigma_min":
                return discrete_time_uniform_sigmas(abar, steps + 1, append_zero=False)
            return discrete_time_uniform_sigmas(abar, steps)
        lo, hi = self.sigma_range(net)
        if self.resolved_end == "sigma_min":
            return make_sigmas(self.grid, steps + 1, lo, hi, append_zero=False)
        return make_sigmas(self.grid, steps, lo, hi)

    def config(self, net: nn.Module | None = None) -> dict:
        sig = self.sigmas(net)
        dz = bool(self.options.get("denoise_to_zero", False))
        return {**asdict(self), "end": self.resolved_end, "steps": len(sig) - 1,
                "nfe": nfe_for_sigmas(self.sampler, sig, denoise_to_zero=dz),
                "sigma_min": self.sigma_range(net)[0], "sigma_max": self.sigma_range(net)[1]}


@dataclass
class Generated:
    images: torch.Tensor  # float32 [N, C, H, W], nominally in [-1, 1] (not clamped)
    labels: torch.Tensor | None  # int64 [N] or None
    seeds: list[int]
    nfe: int
    seconds: float
    processes: int = 1  # ranks that produced these images (torchrun)
    #: with a cache policy: network calls, full and partial (:meth:`~skiptune.skip.CacheStats.to_dict`),
    #: and ``full_per_sample`` / ``partial_per_sample`` evaluations of one trajectory
    cache: dict | None = None


def check_class_label(class_label: int | None, label_dim: int) -> None:
    """A fixed class label must be one of the network's classes; an unconditional network takes none."""
    if class_label is None:
        return
    if not label_dim:
        raise InputError(f"class label {class_label} given, but the network is unconditional (label_dim 0): it "
                         "takes no class label; drop the class label")
    if isinstance(class_label, bool) or int(class_label) != class_label or not 0 <= class_label < label_dim:
        raise InputError(f"class label {class_label} outside 0..{label_dim - 1} (the network has {label_dim} "
                         "classes)")


def check_guidance(net: nn.Module, guidance: float | None) -> None:
    """Classifier-free guidance needs a class-conditional network trained with a null label; refuse others."""
    if guidance is None or guidance == 1.0:
        return
    info = DenoiserInfo.of(net)
    if not info.label_dim:
        raise InputError(f"guidance {guidance:g} needs a class-conditional network, but this one is unconditional "
                         "(label_dim 0); drop --guidance")
    if not info.null_label:
        raise InputError(f"guidance {guidance:g} needs an unconditional pass, but this {type(net).__name__} has no "
                         "trained null label (it was not trained for classifier-free guidance, as EDM's ImageNet "
                         "model); drop --guidance")


def _labels_for(noise: SeedNoise, label_dim: int, class_label: int | None) -> torch.Tensor | None:
    check_class_label(class_label, label_dim)
    if not label_dim:
        return None
    if class_label is not None:
        return torch.full((len(noise),), class_label, dtype=torch.long)
    u = noise.rand([1]).reshape(-1).to(torch.float64)
    return (u * label_dim).floor().long().clamp_max(label_dim - 1)


@torch.no_grad()
def generate(net: nn.Module, seeds: str | Sequence[int], spec: SamplingSpec, *, rule: Any = "none",
             mode: str = "concat", batch_size: int = 64, class_label: int | None = None,
             device: str | torch.device = "cpu", progress: bool = False,
             on_batch: Callable[[list[int], torch.Tensor], None] | None = None,
             freeu: FreeUConfig | str | None = None, precision: str = "fp32",
             cache: CachePolicy | str | None = None, time_cache: bool = False) -> Generated:
    """Sample one image per seed; latents ``sigma_max * z`` with z ~ N(0, I) from the seed's generator.

    Class-conditional nets get a label per seed, uniform from the seed's generator (or
    ``class_label`` for all; an unconditional net refuses a ``class_label``). The rule is attached for the
    whole run and detached afterwards, and so is FreeU (:mod:`skiptune.skip.freeu`) when ``freeu`` gives its
    factors. ``precision`` ``bf16`` or ``fp16`` runs the network under autocast (the sampler state stays
    float64). ``cache`` attaches a feature-cache policy (:mod:`skiptune.skip.cache`), reset at every batch;
    ``time_cache`` times its full and partial calls (a synchronisation per call on CUDA).
    """
    seeds = parse_seeds(seeds)
    if not seeds:
        raise InputError("no seeds given")
    if batch_size < 1:
        raise InputError("batch_size must be >= 1")
    device = torch.device(device)
    net = net.to(device).eval()
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    _warn_cpu_autocast(precision, device)
    denoiser = EDMDenoiser(net, autocast=PRECISIONS[precision])
    if spec.guidance is not None:
        check_guidance(net, spec.guidance)
        denoiser = CFGDenoiser(denoiser, spec.guidance, {"class_labels": None})
    sigmas = spec.sigmas(net)
    nfe = nfe_for_sigmas(spec.sampler, sigmas, denoise_to_zero=bool(spec.options.get("denoise_to_zero", False)))
    info = DenoiserInfo.of(net)
    label_dim, shape = info.label_dim, info.shape
    check_class_label(class_label, label_dim)  # before any sampling
    rule = as_rule(rule)
    out, labels = [], []
    t0 = time.perf_counter()
    bar = tqdm(total=len(seeds), desc=f"{spec.sampler} nfe={nfe} {rule}", unit="img", disable=not progress,
               leave=False)
    with ExitStack() as hooks:
        hooks.enter_context(skip_tuning(net, rule, mode=mode, sigma_range=spec.sigma_range(net)))
        if freeu is not None:
            hooks.enter_context(FreeU(net, freeu))
        # guidance runs the network twice per evaluation (conditional, unconditional): two caches
        cached = hooks.enter_context(FeatureCache(net, cache, streams=1 if spec.guidance is None else 2,
                                                  timing=time_cache))
        for i in range(0, len(seeds), batch_size):
            batch = seeds[i:i + batch_size]
            cached.reset()
            noise = SeedNoise(batch, device=device)
            x = noise.randn(shape).to(torch.float64) * float(sigmas[0])
            lab = _labels_for(noise, label_dim, class_label)
            extra = {"class_labels": torch.eye(label_dim, device=device)[lab]} if lab is not None else {}
            y = sample(spec.sampler, denoiser, x, sigmas, extra_args=extra, noise=noise, **spec.options)
            y = y.to(torch.float32).cpu()
            if on_batch is not None:
                on_batch(batch, y)
            out.append(y)
            if lab is not None:
                labels.append(lab.cpu())
            bar.update(len(batch))
    bar.close()
    return Generated(torch.cat(out), torch.cat(labels) if labels else None, seeds, nfe, time.perf_counter() - t0,
                     cache=_cache_record(cached, nfe))


def _cache_record(cached: FeatureCache, nfe: int) -> dict | None:
    """What a cached run computed: its calls, and the full/partial evaluations of one trajectory."""
    if cached.policy is None:
        return None
    full = cached.policy.full_evaluations(nfe)
    return {"policy": str(cached.policy), **cached.stats.to_dict(), "full_per_sample": full,
            "partial_per_sample": nfe - full}


def _warn_cpu_autocast(precision: str, device: torch.device) -> None:
    """bf16/fp16 autocast on a CPU gives no speed-up and can be far slower than fp32: say so, once per process."""
    global _warned_cpu_autocast
    if PRECISIONS.get(precision) is None or device.type != "cpu" or _warned_cpu_autocast:
        return
    _warned_cpu_autocast = True
    warnings.warn(f"precision {precision} on the CPU: autocast there brings no speed-up and, on CPUs without native "
                  f"{precision} support, can be up to ~80x slower than fp32, and it is less precise; use fp32 on a "
                  "CPU (--precision fp32), or a CUDA device for mixed precision", UserWarning, stacklevel=3)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 (round to nearest, clipped), as EDM's generate.py writes PNGs."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)
