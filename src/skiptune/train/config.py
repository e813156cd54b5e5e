"""Training configuration: the :class:`TrainConfig` dataclass and how it resolves to a network.

The network is one of: a named preset (``arch``; its image channels and label dimension are taken
from the data, its resolution must match), an explicit ``net`` spec (``{'class_name', 'kwargs'}`` or
plain ``EDMPrecond`` kwargs; missing resolution/channels/label_dim are filled from the data), or by
default a DDPM++ ``SongUNet`` (the ``ddpmpp-cifar10`` preset's architecture) with the
``model_channels``/``channel_mult``/``num_blocks``/``attn_resolutions``/``dropout`` fields.
The objective decides the wrapper: ``EDMPrecond`` for ``edm``, the discrete eps-prediction
``DDPMPrecond`` (T = 1000, linear betas 1e-4..0.02) for ``ddpm`` and ``s2dm``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields

from skiptune.core.errors import InputError
from skiptune.nets.presets import preset_config
from skiptune.train.data import ImageDataset, data_option_checks
from skiptune.train.s2dm import DISCRETE_OBJECTIVES

OBJECTIVES = ("edm", *DISCRETE_OBJECTIVES)
# Precond kwargs that only EDMPrecond takes (a discrete network cannot be built with them).
_EDM_ONLY_KWARGS = ("sigma_min", "sigma_max", "sigma_data")

# Fields that may differ when a run is resumed: they change how long or how visibly it runs, not its result.
RESUMABLE_CHANGES = ("steps", "images", "out", "device", "save_every", "log_every", "progress")


@dataclass
class TrainConfig:
    """Everything that defines a training run (all sizes in images or optimizer steps).

    Data: ``data`` is a :func:`~skiptune.train.data.load_dataset` spec; ``resolution``, ``data_size``
    and ``data_seed`` are passed on to it (``resolution`` and ``data_size`` must be >= 1 when given;
    ``data_size`` and a ``data_seed`` other than 0 only apply to the generated ``shapes`` set and are
    refused for any other data, so that the config never records a setting that was not used).
    ``xflip`` mirrors each image with probability 1/2 (off by default; never use it on digits). ``cond``
    trains class-conditionally on one-hot labels, each replaced by the zero vector with probability
    ``label_dropout``.
    Optimisation: Adam(``lr``, ``betas``, ``adam_eps``) on the mean over the batch of the per-image
    EDM loss (:mod:`skiptune.train.loss`); learning rate ``lr * min(images_seen / lr_warmup_images, 1)``
    with images_seen counted after the step, and with ``lr_cooldown_start`` = c also multiplied by
    ``(total - step) / (total - c)`` from step c on (a linear cool-down to 0 at the last step: the
    warmup-stable-decay schedule); optional gradient-norm clipping ``grad_clip``;
    EMA half-life ``ema_halflife_images`` (capped at ``ema_rampup_ratio * images_seen`` if set).
    Length: exactly one of ``steps`` and ``images`` (rounded up to whole batches).
    Objective: ``edm`` (the EDM loss; ``P_mean``/``P_std``), ``ddpm`` (discrete eps-prediction L0,
    antithetic timesteps) or ``s2dm`` (``tau L0 + (1 - tau) L_skip`` with skip span ``skip_span``; see
    :mod:`skiptune.train.s2dm`); ``skip_span`` and ``tau`` are used by ``s2dm`` only. ``grad_clip="auto"``
    (the default, here and on the command line) is the recipe of the objective: no clipping for ``edm``,
    1.0 for ``ddpm``/``s2dm`` (the DDPM recipe); it is resolved on construction.
    Warm start: ``init_from`` names a skiptune checkpoint (or an EDM network pickle, read safely) of the
    same network whose weights start both the network and its EMA (optimizer, schedule and step count
    start afresh), e.g. to continue a run that has finished its cool-down or to fine-tune a trained
    network on other data.
    """

    data: str = "digits"
    out: str = "runs/train"
    # network
    arch: str | None = None
    net: dict | None = None
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (8,)
    dropout: float = 0.0
    # data
    resolution: int | None = None
    data_size: int | None = None
    data_seed: int = 0
    xflip: bool = False
    cond: bool = False
    label_dropout: float = 0.0
    # optimisation
    batch: int = 64
    steps: int | None = None
    images: int | None = None
    lr: float = 1e-3
    lr_warmup_images: int = 10_000
    lr_cooldown_start: int | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float | str | None = "auto"
    ema_halflife_images: float = 10_000
    ema_rampup_ratio: float | None = 0.05
    P_mean: float = -1.2
    P_std: float = 1.2
    # objective
    objective: str = "edm"
    skip_span: int = 10
    tau: float = 0.99
    seed: int = 0
    init_from: str | None = None
    device: str = "cpu"
    # output
    save_every: int | None = 1000
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if self.grad_clip == "auto":  # the objective's recipe (one policy for the library and the command line)
            self.grad_clip = None if self.objective == "edm" else 1.0
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    def total_steps(self) -> int:
        """Optimizer steps of the whole run: ``steps``, or ``ceil(images / batch)``."""
        return self.steps if self.steps is not None else math.ceil(self.images / self.batch)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if (self.steps is None) == (self.images is None):
            raise InputError("give exactly one of steps and images (the training length)")
        if (self.steps is not None and self.steps < 1) or (self.images is not None and self.images < 1):
            raise InputError("the training length must be at least one step")
        checks = [
            (self.batch >= 1, f"batch must be >= 1, got {self.batch}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.lr_warmup_images >= 0, f"lr_warmup_images must be >= 0, got {self.lr_warmup_images}"),
            (self.lr_cooldown_start is None or 0 <= self.lr_cooldown_start < self.total_steps(),
             f"lr_cooldown_start must be a step in 0..{self.total_steps() - 1} (the cool-down ends at the last "
             f"step), got {self.lr_cooldown_start}"),
            (all(0 <= b < 1 for b in self.betas), f"betas must lie in [0, 1), got {self.betas}"),
            (self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip}"),
            (self.ema_halflife_images >= 0, f"ema_halflife_images must be >= 0, got {self.ema_halflife_images}"),
            (self.ema_rampup_ratio is None or self.ema_rampup_ratio > 0,
             f"ema_rampup_ratio must be > 0 or None, got {self.ema_rampup_ratio}"),
            (self.P_std > 0, f"P_std must be > 0, got {self.P_std}"),
            (self.objective in OBJECTIVES,
             f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"),
            (not isinstance(self.skip_span, bool) and int(self.skip_span) == self.skip_span and self.skip_span >= 1,
             f"skip_span must be an integer >= 1 (diffusion steps between t and t-k), got {self.skip_span}"),
            (0 <= self.tau <= 1, f"tau must be in [0, 1] (1 = plain DDPM loss), got {self.tau}"),
            (0 <= self.label_dropout <= 1, f"label_dropout must be in [0, 1], got {self.label_dropout}"),
            (self.label_dropout == 0 or self.cond, "label_dropout needs cond=True"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.save_every is None or self.save_every >= 1, f"save_every must be >= 1, got {self.save_every}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (not (self.arch and self.net), "give at most one of arch and net"),
            (not (self.xflip and self.data == "digits"), "digits are not mirror-symmetric: do not use xflip on them"),
            *data_option_checks(self.data, self.resolution, self.data_size, self.data_seed),
            (self.model_channels >= 1 and self.num_blocks >= 1 and len(self.channel_mult) >= 1
             and all(m >= 1 for m in self.channel_mult), "model_channels, num_blocks and channel_mult must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"], d["attn_resolutions"], d["betas"] = (list(d[k]) for k in
                                                                 ("channel_mult", "attn_resolutions", "betas"))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown training config fields: {unknown}")
        return cls(**d)


def ddpmpp_kwargs(resolution: int, channels: int, label_dim: int = 0, model_channels: int = 32,
                  channel_mult: tuple[int, ...] = (1, 2, 2), num_blocks: int = 2,
                  attn_resolutions: tuple[int, ...] = (8,), dropout: float = 0.0) -> dict:
    """``EDMPrecond`` kwargs of a DDPM++ SongUNet (the ``ddpmpp-cifar10`` architecture, no augment input)."""
    levels = [resolution >> i for i in range(len(channel_mult))]
    if resolution % (1 << (len(channel_mult) - 1)) or levels[-1] < 1:
        raise InputError(f"a {len(channel_mult)}-level UNet needs a resolution divisible by "
                         f"{1 << (len(channel_mult) - 1)}; the data are {resolution}x{resolution}")
    bad = [r for r in attn_resolutions if r not in levels]
    if bad:
        raise InputError(f"attention resolutions {bad} are not among the UNet's levels {levels}")
    _, kwargs = preset_config("ddpmpp-cifar10")
    kwargs.update(img_resolution=resolution, img_channels=channels, label_dim=label_dim,
                  model_channels=model_channels, channel_mult=list(channel_mult), num_blocks=num_blocks,
                  attn_resolutions=list(attn_resolutions), dropout=dropout, augment_dim=0)
    return kwargs


def resolve_network(config: TrainConfig, data: ImageDataset) -> tuple[str, dict]:
    """``(class_name, kwargs)`` of the network to train on ``data`` (see the module docstring)."""
    if config.objective in DISCRETE_OBJECTIVES:
        return _resolve_discrete(config, data)
    if config.cond and data.num_classes == 0:
        raise InputError(f"data set {data.name!r} has no labels: it cannot be trained class-conditionally")
    label_dim = data.num_classes if config.cond else 0
    if config.arch:
        class_name, kwargs = preset_config(config.arch)
        if kwargs["img_resolution"] != data.resolution:
            raise InputError(f"preset {config.arch} is for {kwargs['img_resolution']}px images but the data are "
                             f"{data.resolution}px: resize the data (resolution) or use the DDPM++ options")
        kwargs.update(img_channels=data.channels, label_dim=label_dim)
    elif config.net is not None:
        spec = copy.deepcopy(config.net)
        if "kwargs" in spec:
            class_name, kwargs = spec.get("class_name", "EDMPrecond"), spec["kwargs"]
        else:
            class_name, kwargs = "EDMPrecond", spec
        for key, want in (("img_resolution", data.resolution), ("img_channels", data.channels),
                          ("label_dim", label_dim)):
            if kwargs.setdefault(key, want) != want:
                raise InputError(f"network {key}={kwargs[key]} does not match the data / cond setting ({want})")
    else:
        class_name = "EDMPrecond"
        kwargs = ddpmpp_kwargs(data.resolution, data.channels, label_dim, config.model_channels,
                               config.channel_mult, config.num_blocks, config.attn_resolutions, config.dropout)
    if class_name != "EDMPrecond":
        raise InputError(f"the EDM loss needs EDMPrecond, not {class_name} (a DDPMPrecond network trains with "
                         "objective ddpm or s2dm)")
    return class_name, kwargs


def _resolve_discrete(config: TrainConfig, data: ImageDataset) -> tuple[str, dict]:
    """The same network choices as for EDM, wrapped as a discrete eps-prediction ``DDPMPrecond``."""
    edm_config = copy.copy(config)
    edm_config.objective = "edm"
    spec = config.net
    if spec is not None and "kwargs" in spec:
        wanted = spec.get("class_name", "DDPMPrecond")
        if wanted != "DDPMPrecond":
            raise InputError(f"objective {config.objective!r} trains a discrete eps-prediction network "
                             f"(DDPMPrecond), not {wanted}: set class_name to DDPMPrecond or drop it")
        edm_config.net = {"class_name": "EDMPrecond", "kwargs": spec["kwargs"]}
    _, kwargs = resolve_network(edm_config, data)
    bad = sorted(k for k in _EDM_ONLY_KWARGS if k in kwargs)
    if bad:
        raise InputError(f"network kwargs {bad} belong to EDMPrecond; objective {config.objective!r} uses "
                         "DDPMPrecond (schedule kwargs: M, beta_start, beta_end)")
    from skiptune.train.s2dm import check_skip_span

    check_skip_span(config.skip_span, int(kwargs.get("M", 1000)))
    return "DDPMPrecond", kwargs
