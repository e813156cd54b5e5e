"""Learned per-site rho and full fine-tuning by feature-space score matching vs Skip-Tuning (seed 003, Tables 11, 12).

Seed 003, Sec. 5.3, asks whether the gain of Skip-Tuning can be had by *training* on the
feature-space score-matching loss it lowers. Two experiments, both repeated here:

- **Fine-tuning rho** (Table 11). The weights are frozen and only the per-site coefficients are
  learned, ``cat(u_i, rho_i d_i)``, by minimising the feature-space loss (ResNet-101 in the paper)
  ``L_feature = E_sigma lambda(sigma) E_y ||f(D_rho(y + sigma n, sigma)) - f(y)||^2``. Raw
  (``rho = theta``) the paper finds some rho driven above 1 and the FID collapsing (Heun 9 NFE:
  35.12 -> 215.09); through a sigmoid (``rho = sigmoid(theta)`` in (0, 1)) it improves
  (35.12 -> 18.92) but less than hand-set Skip-Tuning (18.71).
- **Full fine-tuning** (Table 12). All weights trained on ``L_hybrid = L_pixel + L_feature``
  (Inception-V3 features in the paper): FID first improves slightly (2.60 -> 2.51 at 10 Mimg),
  then deteriorates (6.03 at 60 Mimg).

The paper's losses (Sec. 5.1, Sec. 5.3):

    L_pixel   = E_t omega_t E_x ||x_theta(x_t, t) - x||_2^2,
    L_feature = E_t omega_t E_x ||f(x_theta(x_t, t)) - f(x)||_2^2,
    L_hybrid  = L_pixel + L_feature                                  (Table 12, f = Inception-V3).

Here: sigma ~ EDM training log-normal (ln sigma ~ N(-1.2, 1.2^2)), omega = lambda(sigma) the EDM
weighting (``weighting='edm'``; the paper's Table 9 values imply such a weighting, see
:mod:`skiptune.analysis.dsm`), f the registered feature network's FID feature (differentiable through
:meth:`~skiptune.metrics.FeatureExtractor.float_features`). ``reduction`` sets how ||.||^2 is taken:
``mean`` over the dimensions (pixels, feature dims; EDM's per-element training loss, the size of the
paper's Table 8 L_pixel = 0.52) or ``sum`` (the squared norm as the paper writes it). The two give the
pixel and feature terms of L_hybrid different weights: with ``sum`` the ratio L_feature / L_pixel is
(feature dims / pixel dims) times its ``mean`` value; ``feature_weight`` rescales the feature term.

Training: Adam with cosine learning-rate decay;
raw rho is projected onto rho >= 0.001 after each step (rules need rho > 0). The learned rho
becomes a ``sites:`` rule, and FIDs of every variant are computed by :func:`skiptune.runs.sweep.run_sweep`
with the same seeds (so differences to the baseline are paired).

Settings: a frozen :class:`FinetuneConfig` (loss weighting, seed) with the parts :class:`RhoFitConfig`,
:class:`FullFinetuneConfig` and :class:`FidConfig`, grouped as the stored result's ``config`` groups
them; each checks itself on construction, and its defaults are those of ``skiptune analyze finetune``.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from skiptune.analysis.base import AnalysisResult, cached
from skiptune.analysis.denoising import (
    EDM_P_MEAN,
    EDM_P_STD,
    attach_joins,
    check_rule,
    denoise,
    edm_lognormal_sigmas,
    images_for,
    one_hot,
)
from skiptune.analysis.scoring import results_store
from skiptune.core.checks import finite, integer, positive
from skiptune.core.checksums import state_dict_sha256, tensor_sha256
from skiptune.core.denoiser import DenoiserInfo
from skiptune.core.errors import InputError
from skiptune.core.stats import t_interval
from skiptune.experiment import Scorer
from skiptune.runs.sweep import SweepSpec, run_sweep
from skiptune.runs.sweep import seed_sets as split_seed_sets
from skiptune.sampling import SAMPLERS, sampler_fields
from skiptune.skip import canonical_rule
from skiptune.store import Store
from skiptune.train.loss import edm_weight

NAME = "finetune"
HELP = "learn per-site rho (raw / sigmoid) or all weights by feature-space score matching; compare FID (Tables 11, 12)"
PARAMS = ("raw", "sigmoid")
LOSSES = ("feature", "pixel", "hybrid")
#: how a squared error is reduced over the dimensions of a space (see the module doc)
REDUCTIONS = ("mean", "sum")
RHO_FLOOR = 1e-3

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- settings ----------------------------------------------------------------------------------------------------------

def _as_tuple(obj, name: str, example: str) -> None:
    """Store the sequence field ``name`` of a frozen config as a tuple (a bare string is refused, not split)."""
    value = getattr(obj, name)
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InputError(f"{type(obj).__name__}.{name} must be a sequence such as {example}, got {value!r}")
    object.__setattr__(obj, name, tuple(value))


@dataclass(frozen=True)
class RhoFitConfig:
    """The rho fits of Table 11 (frozen weights, one learned rho per skip site): ``config["rho"]``.

    ``params``: parametrisations to fit, ``raw`` (rho = theta) and/or ``sigmoid`` (rho = sigmoid_max *
    sigmoid(theta)); ``()`` skips the fits. ``loss``: one of :data:`LOSSES` (``feature_weight`` weighs the
    feature term of ``hybrid``). Adam with learning rate ``lr`` cosine-decayed over ``steps`` batches of
    ``batch`` draws; the raw fit starts at rho = ``init_raw``, the sigmoid fit at ``init_sigmoid``.
    """

    params: tuple[str, ...] = PARAMS
    loss: str = "feature"
    steps: int = 50
    batch: int = 32
    lr: float = 0.02
    init_raw: float = 1.0
    init_sigmoid: float = 0.9
    sigmoid_max: float = 1.0
    feature_weight: float = 1.0

    def __post_init__(self):
        _as_tuple(self, "params", "('raw', 'sigmoid')")
        for p in self.params:
            if p not in PARAMS:
                raise InputError(f"RhoFitConfig.params: unknown parametrisation {p!r}; use raw and/or sigmoid "
                                 "(or () to skip the rho fits)")
        if self.loss not in LOSSES:
            raise InputError(f"RhoFitConfig.loss: unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        integer(self.steps, minimum=1, what="RhoFitConfig.steps")
        integer(self.batch, minimum=1, what="RhoFitConfig.batch")
        positive(self.lr, what="RhoFitConfig.lr")
        finite(self.init_raw, what="RhoFitConfig.init_raw")
        positive(self.sigmoid_max, what="RhoFitConfig.sigmoid_max")
        finite(self.feature_weight, what="RhoFitConfig.feature_weight")
        if "sigmoid" in self.params and not 0 < self.init_sigmoid < self.sigmoid_max:
            raise InputError(f"RhoFitConfig.init_sigmoid must lie in (0, sigmoid_max = {self.sigmoid_max:g}) "
                             f"(sigmoid rho = sigmoid_max * sigmoid(theta)), got {self.init_sigmoid!r}: lower "
                             "init_sigmoid or raise sigmoid_max")

    def init(self, param: str) -> float:
        """The initial rho of the fit with parametrisation ``param``."""
        return self.init_raw if param == "raw" else self.init_sigmoid

    def unit(self, param: str) -> dict:
        """The settings of the fit with parametrisation ``param``, as its stored unit holds them."""
        return {"param": param, "loss": self.loss, "steps": self.steps, "batch": self.batch, "lr": self.lr,
                "init": self.init(param), "rho_max": self.sigmoid_max if param == "sigmoid" else None,
                "feature_weight": self.feature_weight if self.loss == "hybrid" else None}

    def record(self) -> dict:
        """``config["rho"]`` of the stored result."""
        return {"params": list(self.params), "loss": self.loss, "steps": self.steps, "batch": self.batch,
                "lr": self.lr, "init_raw": self.init_raw, "init_sigmoid": self.init_sigmoid,
                "sigmoid_max": self.sigmoid_max, "feature_weight": self.feature_weight}


@dataclass(frozen=True)
class FullFinetuneConfig:
    """The full fine-tuning of Table 12 (all weights of a copy, L_pixel + feature_weight L_feature):
    ``config["full"]``.

    ``steps`` Adam steps (cosine-decayed ``lr``) of ``batch`` draws; 0 skips it. FID is measured after
    the steps in ``checkpoints`` (None or empty: half-way and at the end; a 0 is dropped).
    """

    steps: int = 60
    checkpoints: tuple[int, ...] | None = None
    batch: int = 32
    lr: float = 2e-4
    feature_weight: float = 1.0

    def __post_init__(self):
        integer(self.steps, minimum=0, what="FullFinetuneConfig.steps")
        integer(self.batch, minimum=1, what="FullFinetuneConfig.batch")
        positive(self.lr, what="FullFinetuneConfig.lr")
        finite(self.feature_weight, what="FullFinetuneConfig.feature_weight")
        if self.checkpoints is not None:
            _as_tuple(self, "checkpoints", "(30, 60)")
            for c in self.checkpoints:
                integer(c, minimum=0, what="every FullFinetuneConfig.checkpoints entry")
        bad = [c for c in self.checkpoint_steps if not 1 <= c <= self.steps]
        if bad:
            raise InputError(f"FullFinetuneConfig.checkpoints must lie in 1..{self.steps} (the steps), got {bad}: "
                             "drop them or raise FullFinetuneConfig.steps")

    @property
    def checkpoint_steps(self) -> list[int]:
        """The steps after which FID is measured, sorted (``[]`` when the fine-tuning is skipped)."""
        if not self.steps:
            return []
        default = [self.steps // 2, self.steps] if self.steps > 1 else [self.steps]
        return sorted(set(self.checkpoints or default) - {0})

    def record(self) -> dict:
        """``config["full"]`` of the stored result."""
        return {"steps": self.steps, "checkpoints": self.checkpoint_steps, "batch": self.batch, "lr": self.lr,
                "loss": "hybrid", "feature_weight": self.feature_weight}


@dataclass(frozen=True)
class FidConfig:
    """How every variant is scored: ``sampler`` at each NFE in ``nfes`` on ``seed_sets`` disjoint seed sets
    (``seeds`` is the first, e.g. ``0-99``; the others are shifted copies), generated ``batch`` at a time;
    ``compare_rules`` are the hand-set Skip-Tuning rules measured next to the learned ones."""

    sampler: str = "heun"
    nfes: tuple[int, ...] = (9,)
    seeds: str = "0-99"
    seed_sets: int = 3
    batch: int = 100
    compare_rules: tuple[str, ...] = ("const:0.7",)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise InputError(f"FidConfig.sampler: unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        _as_tuple(self, "nfes", "(9,)")
        if not self.nfes:
            raise InputError("FidConfig.nfes is empty: give at least one NFE, e.g. (9,)")
        for nfe in self.nfes:
            integer(nfe, minimum=1, what="every FidConfig.nfes entry")
        integer(self.seed_sets, minimum=1, what="FidConfig.seed_sets")
        integer(self.batch, minimum=1, what="FidConfig.batch")
        try:
            split_seed_sets(self.seeds, self.seed_sets)
        except ValueError as e:
            raise InputError(f"FidConfig.seeds {self.seeds!r}: {e}; give e.g. '0-99' or '0,3,7'") from None
        _as_tuple(self, "compare_rules", "('const:0.7',)")
        for rule in self.compare_rules:
            try:
                canonical_rule(rule)
            except ValueError as e:
                raise InputError(f"FidConfig.compare_rules: {e}") from None

    @property
    def sets(self) -> list[str]:
        """The seed sets, e.g. ``["0-99", "100-199", "200-299"]``."""
        return split_seed_sets(self.seeds, self.seed_sets)

    def record(self) -> dict:
        """``config["fid"]`` of the stored result (the sampler with its revision)."""
        return {**sampler_fields(self.sampler), "nfes": list(self.nfes), "seed_sets": self.sets, "batch": self.batch}


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of :func:`run_finetune`: the loss ``weighting`` over sigma (``edm`` lambda(sigma) or
    ``none``), the ``seed`` of the training draws, the ``reduction`` of squared errors over dimensions
    (``mean`` or ``sum``, see the module doc), and the parts. The defaults are those of ``skiptune
    analyze finetune``. (The command line sets both ``feature_weight`` fields from ``--feature-weight``.)"""

    weighting: str = "edm"
    seed: int = 0
    reduction: str = "mean"
    rho: RhoFitConfig = field(default_factory=RhoFitConfig)
    full: FullFinetuneConfig = field(default_factory=FullFinetuneConfig)
    fid: FidConfig = field(default_factory=FidConfig)

    def __post_init__(self):
        if self.weighting not in ("edm", "none"):
            raise InputError(f"FinetuneConfig.weighting: unknown weighting {self.weighting!r}; use edm or none")
        if self.reduction not in REDUCTIONS:
            raise InputError(f"FinetuneConfig.reduction: unknown reduction {self.reduction!r}; use mean or sum")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise InputError(f"FinetuneConfig.seed must be an integer, got {self.seed!r}")
        for name, cls in (("rho", RhoFitConfig), ("full", FullFinetuneConfig), ("fid", FidConfig)):
            if not isinstance(getattr(self, name), cls):
                raise InputError(f"FinetuneConfig.{name} must be a {cls.__name__}, got {getattr(self, name)!r}")


# -- losses ------------------------------------------------------------------------------------------------------------

def make_loss(kind: str, extractor=None, feature: str | None = None, feature_weight: float = 1.0,
              reduction: str = "mean") -> LossFn:
    """Per-sample loss ``(denoised, clean) -> [N]``: ``pixel`` = (D - y)^2 over pixels, ``feature`` = (f(D) - f(y))^2
    over feature dims, ``hybrid`` = pixel + feature_weight * feature (seed 003, Sec. 5.3), each averaged over its
    dimensions (``reduction='mean'``) or summed (``'sum'``, the squared l2 norms the paper writes)."""
    if kind not in LOSSES:
        raise InputError(f"unknown loss {kind!r}; use one of {', '.join(LOSSES)}")
    if reduction not in REDUCTIONS:
        raise InputError(f"unknown reduction {reduction!r}; use mean or sum")
    if kind != "pixel" and extractor is None:
        raise InputError(f"the {kind} loss needs a feature network")
    feature = feature or (extractor.feature_for("fid") if extractor is not None else None)

    def reduce(sq):
        return sq.sum(1) if reduction == "sum" else sq.mean(1)

    def pixel(d, y):
        return reduce((d - y).pow(2).flatten(1))

    def feat(d, y):
        f_d = extractor.float_features(d, features=[feature])[feature]
        with torch.no_grad():
            f_y = extractor.float_features(y, features=[feature])[feature]
        return reduce((f_d - f_y).pow(2).flatten(1)).to(d.device)

    if kind == "pixel":
        return pixel
    if kind == "feature":
        return feat
    return lambda d, y: pixel(d, y) + feature_weight * feat(d, y)


@dataclass
class _Draws:
    """Training batches from one generator: image indices, sigma ~ log-normal, unit noise."""

    images: torch.Tensor
    labels: torch.Tensor | None
    batch: int
    seed: int
    p_mean: float = EDM_P_MEAN
    p_std: float = EDM_P_STD
    generator: torch.Generator = field(init=False)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)

    def next(self):
        g = self.generator
        idx = torch.randint(0, len(self.images), (self.batch,), generator=g)
        sigma = edm_lognormal_sigmas(self.batch, g, self.p_mean, self.p_std)
        noise = torch.randn((self.batch, *self.images.shape[1:]), generator=g)
        y = self.images[idx]
        x = y + sigma.to(torch.float32).reshape(-1, 1, 1, 1) * noise
        return y, x, sigma, None if self.labels is None else self.labels[idx]


def _weighted_mean(per_sample: torch.Tensor, sigma: torch.Tensor, weighting: str, sigma_data: float) -> torch.Tensor:
    if weighting == "edm":
        return (per_sample * edm_weight(sigma, sigma_data).to(per_sample)).mean()
    if weighting == "none":
        return per_sample.mean()
    raise InputError(f"unknown weighting {weighting!r}; use edm or none")


# -- fine-tuning rho ---------------------------------------------------------------------------------------------------

def rho_of(theta: torch.Tensor, param: str, rho_max: float = 1.0) -> torch.Tensor:
    """rho from the free parameters: ``theta`` (raw) or ``rho_max * sigmoid(theta)`` (sigmoid)."""
    if param == "raw":
        return theta
    if param == "sigmoid":
        return rho_max * torch.sigmoid(theta)
    raise InputError(f"unknown parametrisation {param!r}; use raw or sigmoid")


def theta_of(rho: float, param: str, rho_max: float = 1.0) -> float:
    """Inverse of :func:`rho_of` for one value (sigmoid needs 0 < rho < rho_max)."""
    if param == "raw":
        return rho
    if not 0 < rho < rho_max:
        raise InputError(f"sigmoid rho lives in (0, {rho_max:g}); initial rho {rho} is outside")
    p = rho / rho_max
    return math.log(p / (1 - p))


def fit_rho(net: nn.Module, images: torch.Tensor, loss: LossFn, *, param: str = "sigmoid", steps: int = 50,
            batch: int = 32, lr: float = 0.02, init: float = 0.9, rho_max: float = 1.0, weighting: str = "edm",
            seed: int = 0, labels: torch.Tensor | None = None, p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD,
            progress: bool = False) -> dict:
    """Learn one rho per skip site with frozen weights (seed 003, Table 11).

    Minimises ``mean_batch lambda(sigma) loss(D_rho(y + sigma n, sigma), y)`` over draws of images,
    sigma ~ exp(N(p_mean, p_std^2)) and noise from one generator seeded ``seed``, with Adam (cosine
    decay of ``lr`` over ``steps``). ``labels`` are one-hot (or None). Returns ``{"rho": [...],
    "loss": [per step], "rho_trace": [rho every 10 steps]}``. The weights' ``requires_grad`` flags are
    restored afterwards; the hooks are removed also after an error.
    """
    from skiptune.adapters import find_adapter

    if steps < 1 or batch < 1 or not lr > 0:
        raise InputError("steps and batch must be >= 1 and lr > 0")
    k = len(find_adapter(net).sites(net))
    theta = torch.full((k,), theta_of(init, param, rho_max), dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    draws = _Draws(images, labels, batch, seed, p_mean, p_std)
    sigma_data = DenoiserInfo.of(net).sigma_data
    current: dict[str, torch.Tensor] = {}
    flags = [p.requires_grad for p in net.parameters()]
    was_training = net.training
    net.eval().requires_grad_(False)
    handles = attach_joins(net, lambda i, u, d: (u, current["rho"][i].to(d.dtype) * d))
    losses, trace = [], []
    try:
        for step in tqdm(range(steps), desc=f"rho ({param})", disable=not progress, leave=False):
            y, x, sigma, lab = draws.next()
            current["rho"] = rho_of(theta, param, rho_max)
            value = _weighted_mean(loss(denoise(net, x, sigma, lab), y), sigma, weighting, sigma_data)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            if param == "raw":
                with torch.no_grad():
                    theta.clamp_(min=RHO_FLOOR)
            losses.append(float(value.detach()))
            if step % 10 == 0 or step == steps - 1:
                trace.append([float(r) for r in rho_of(theta.detach(), param, rho_max)])
    finally:
        for h in handles:
            h.remove()
        for p, f in zip(net.parameters(), flags, strict=True):
            p.requires_grad_(f)
        net.train(was_training)
    return {"rho": [float(r) for r in rho_of(theta.detach(), param, rho_max)], "loss": losses, "rho_trace": trace}


# -- full fine-tuning --------------------------------------------------------------------------------------------------

def finetune_weights(net: nn.Module, images: torch.Tensor, loss: LossFn, *, steps: int = 60, batch: int = 32,
                     lr: float = 2e-4, weighting: str = "edm", seed: int = 0, labels: torch.Tensor | None = None,
                     checkpoints: Sequence[int] = (), on_checkpoint: Callable[[int, nn.Module], object] | None = None,
                     progress: bool = False) -> dict:
    """Train all weights of a copy of ``net`` (``net`` itself is untouched) (seed 003, Table 12).

    Adam (cosine decay) on ``mean_batch lambda(sigma) loss(D(y + sigma n), y)``, sigma from the EDM
    log-normal; no EMA. After the steps listed in ``checkpoints`` ``on_checkpoint(step, copy)`` is
    called with the copy in eval mode. Returns ``{"loss": [per step], "checkpoints": {step: value}}``.
    """
    if steps < 1 or batch < 1 or not lr > 0:
        raise InputError("steps and batch must be >= 1 and lr > 0")
    bad = [c for c in checkpoints if not 1 <= c <= steps]
    if bad:
        raise InputError(f"checkpoints must lie in 1..{steps}, got {bad}")
    model = copy.deepcopy(net).requires_grad_(True)
    params = [p for p in model.parameters() if p.is_floating_point()]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    draws = _Draws(images, labels, batch, seed)
    sigma_data = DenoiserInfo.of(net).sigma_data
    losses, results = [], {}
    for step in tqdm(range(1, steps + 1), desc="fine-tune", disable=not progress, leave=False):
        model.train()
        y, x, sigma, lab = draws.next()
        value = _weighted_mean(loss(denoise(model, x, sigma, lab), y), sigma, weighting, sigma_data)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        losses.append(float(value.detach()))
        if step in checkpoints and on_checkpoint is not None:
            model.eval()
            with torch.no_grad():
                results[step] = on_checkpoint(step, model)
    model.eval()
    return {"loss": losses, "checkpoints": results}


# -- the analysis ------------------------------------------------------------------------------------------------------

def _sites_rule(rho: Sequence[float]) -> str:
    return "sites:" + ",".join(f"{max(r, RHO_FLOOR):.4g}" for r in rho)


@dataclass(frozen=True)
class _Job:
    """One run of the analysis: its settings, prepared inputs, stored ``record`` (the result's config)
    and the results store every unit and FID point goes to."""

    net: nn.Module
    images: torch.Tensor
    labels: torch.Tensor | None  # one-hot, or None for an unconditional network
    config: FinetuneConfig
    scorer: Scorer
    store: Store
    progress: bool
    record: dict

    def unit(self, *keys: str) -> dict:
        return {k: self.record[k] for k in keys}

    def loss(self, kind: str, feature_weight: float) -> LossFn:
        return make_loss(kind, self.scorer.extractor, self.scorer.feature, feature_weight, self.config.reduction)

    def loss_unit(self) -> dict:
        """What determines every training loss of a unit: ``reduction`` is named only when it is not the mean (so
        the units stored before the option existed are the mean's)."""
        unit = self.unit("model", "data", "seed", "features", "weighting")
        return unit | ({"reduction": self.config.reduction} if self.config.reduction != "mean" else {})

    def fids(self, model: nn.Module, rules: Sequence[str]) -> dict[str, list[float]]:
        """FID per seed set of every rule at every NFE, keyed ``"rule|nfe"``. The points are keyed by the
        full weights fingerprint, so they are shared with ``skiptune sweep``."""
        fid = self.config.fid
        spec = SweepSpec(rules=list(dict.fromkeys(rules)), samplers=[fid.sampler], nfes=list(fid.nfes),
                         seed_sets=fid.sets, batch=fid.batch)
        rows = run_sweep(model, spec, store=self.store, scorer=self.scorer, progress=self.progress)
        return {f"{r.rule}|{r.nfe}": list(r.estimate.values) for r in rows}


def run_finetune(net: nn.Module, images: torch.Tensor, config: FinetuneConfig, *, scorer: Scorer,
                 labels: torch.Tensor | None = None, store: Store | None = None, progress: bool = False,
                 model_id: str | None = None) -> AnalysisResult:
    """Learned rho (raw, sigmoid) and full fine-tuning vs the baseline and hand-set rules, by FID (Tables 11, 12).

    ``images``: training images in [-1, 1] (``labels`` their classes, for a class-conditional network);
    ``scorer`` holds the feature network of both the training loss and the FID and its reference
    statistics; ``config`` every setting (``config.rho.params=()`` skips the rho fits,
    ``config.full.steps=0`` the full fine-tuning). ``model_id`` names the weights in stored units
    (default: their sha256). Units in ``store`` (a throw-away one when None): each rho fit, the whole
    full fine-tuning (with its FIDs), and every FID point (via :func:`skiptune.runs.sweep.run_sweep`).
    """
    images = images_for(net, images)
    compare = [check_rule(net, r) for r in config.fid.compare_rules]
    onehot = one_hot(net, labels, len(images))
    record = _record(net, images, config, scorer, compare, model_id)
    with results_store(store) as st:
        job = _Job(net, images, onehot, config, scorer, st, progress, record)
        fits = _fit_rhos(job)
        methods = [("baseline", "none")] + [(f"Skip-Tuning {r}", r) for r in compare]
        methods += [(f"rho fine-tuned ({p})", _sites_rule(fits[p]["rho"])) for p in config.rho.params]
        rule_fids = job.fids(net, [r for _, r in methods])
        full = _finetune_full(job)
    rows = [row for nfe in config.fid.nfes for row in _rows_at(job, nfe, methods, rule_fids, full)]
    return AnalysisResult(NAME, record, rows, _summary(job, fits, full, rows), _notes(job))


def _record(net: nn.Module, images: torch.Tensor, config: FinetuneConfig, scorer: Scorer, compare: list[str],
            model_id: str | None) -> dict:
    """The result's ``config``: everything that determines the numbers."""
    ext = scorer.extractor
    return {"model": model_id or state_dict_sha256(net), "data": tensor_sha256(images), "n": len(images),
            "seed": config.seed,
            "features": {"extractor": ext.name, "feature": scorer.feature, "weights_sha256": ext.weights_sha256},
            "weighting": config.weighting, **({"reduction": config.reduction} if config.reduction != "mean" else {}),
            "rho": config.rho.record(), "full": config.full.record(),
            "fid": config.fid.record(), "compare_rules": compare}


def _fit_rhos(job: _Job) -> dict[str, dict]:
    """1. Learned rho (Table 11): one stored unit per parametrisation."""
    cfg, rho = job.config, job.config.rho
    fits = {}
    for p in rho.params:
        unit = job.loss_unit() | rho.unit(p)
        fits[p] = cached(job.store, "finetune-rho", unit, lambda p=p: fit_rho(
            job.net, job.images, job.loss(rho.loss, rho.feature_weight), param=p, steps=rho.steps, batch=rho.batch,
            lr=rho.lr, init=rho.init(p), rho_max=rho.sigmoid_max, weighting=cfg.weighting, seed=cfg.seed,
            labels=job.labels, progress=job.progress))
    return fits


def _finetune_full(job: _Job) -> dict | None:
    """2. Full fine-tuning (Table 12), with the FIDs of its checkpoints, as one stored unit (None when skipped)."""
    cfg, full = job.config, job.config.full
    if not full.steps:
        return None
    unit = job.loss_unit() | job.unit("full", "fid")
    return cached(job.store, "finetune-full", unit, lambda: finetune_weights(
        job.net, job.images, job.loss("hybrid", full.feature_weight), steps=full.steps, batch=full.batch, lr=full.lr,
        weighting=cfg.weighting, seed=cfg.seed, labels=job.labels, checkpoints=full.checkpoint_steps,
        on_checkpoint=lambda step, m: job.fids(m, ["none"]), progress=job.progress))


def _rows_at(job: _Job, nfe: int, methods: list[tuple[str, str]], rule_fids: dict[str, list[float]],
             full: dict | None) -> list[dict]:
    """The table rows at one NFE: every method's FID and its paired difference to the baseline."""
    fid, tuned = job.config.fid, job.config.full
    entries = [(name, rule, 0, rule_fids[f"{rule}|{nfe}"]) for name, rule in methods]
    if full is not None:
        ck = {str(k): v for k, v in full["checkpoints"].items()}  # JSON keys are strings once stored
        entries += [(f"full fine-tune ({step} steps)", "none", step * tuned.batch, ck[str(step)][f"none|{nfe}"])
                    for step in tuned.checkpoint_steps]
    base = rule_fids[f"none|{nfe}"]
    rows = []
    for name, rule, imgs, vals in entries:
        est = t_interval(vals)
        row = {"method": name, "sampler": fid.sampler, "nfe": nfe, "rule": rule, "train_images": imgs,
               "fid": est.mean, "fid_ci_low": est.ci_low, "fid_ci_high": est.ci_high}
        if name != "baseline":
            diff = t_interval([a - b for a, b in zip(vals, base, strict=True)])
            row |= {"fid_diff": diff.mean, "fid_diff_ci_low": diff.ci_low, "fid_diff_ci_high": diff.ci_high}
        rows.append(row)
    return rows


def _summary(job: _Job, fits: dict[str, dict], full: dict | None, rows: list[dict]) -> dict:
    from skiptune.adapters import find_adapter

    summary: dict = {"num_sites": len(find_adapter(job.net).sites(job.net))}
    for p in job.config.rho.params:
        rho = fits[p]["rho"]
        summary[f"learned rho ({p})"] = _sites_rule(rho)
        summary[f"sites with rho > 1 ({p})"] = sum(r > 1 for r in rho)
        summary[f"rho loss first/last 10 steps ({p})"] = _first_last(fits[p]["loss"])
    if full is not None:
        summary["full fine-tune loss first/last 10 steps"] = _first_last(full["loss"])
    for row in rows:
        summary[f"FID {row['method']} NFE {row['nfe']}"] = row["fid"]
    return summary


def _notes(job: _Job) -> list[str]:
    cfg, rho, full, fid = job.config, job.config.rho, job.config.full, job.config.fid
    sets = fid.sets
    return [
        f"Training images: {len(job.images)}; draws (image, ln sigma ~ N(-1.2, 1.2^2), noise) from a generator seeded "
        f"{cfg.seed}; loss weighting: {'EDM lambda(sigma)' if cfg.weighting == 'edm' else 'none'}; squared errors "
        f"{'summed' if cfg.reduction == 'sum' else 'averaged'} over each space's dimensions; feature network "
        f"{job.scorer.extractor.name} ('{job.scorer.feature}').",
        f"rho fits: {rho.loss} loss, Adam lr {rho.lr:g} cosine-decayed over {rho.steps} steps of batch {rho.batch}; "
        f"raw starts at rho = {rho.init_raw:g} (projected onto rho >= {RHO_FLOOR:g}); sigmoid rho = "
        f"{rho.sigmoid_max:g} * sigmoid(theta) starts at {rho.init_sigmoid:g}. Learned rho rounded to 4 digits in "
        "the rule.",
        (f"Full fine-tuning: all weights of a copy, L_pixel + {full.feature_weight:g} L_feature, Adam lr {full.lr:g} "
         f"cosine-decayed over {full.steps} steps of batch {full.batch} ({full.steps * full.batch} images; the paper "
         f"trains 4-60 M images), no EMA; FID at steps {full.checkpoint_steps}." if full.steps else
         "Full fine-tuning skipped."),
        f"FID: {fid.sampler} at NFE {', '.join(map(str, fid.nfes))}, {len(sets)} seed sets ({', '.join(sets)}), "
        f"{job.scorer.extractor.name} features vs the reference ({job.scorer.ref.n} images); mean and 95% t-interval "
        "over seed sets; fid_diff paired against the baseline on the same seeds.",
        "Paper (EDM ImageNet-64, ResNet-101 loss): Heun 9 NFE 35.12 -> 215.09 (raw rho), 18.92 (sigmoid); 19 NFE "
        "3.64 -> 112.15, 2.77 (Table 11); full fine-tuning 19 NFE 2.60 -> 2.59 (4 Mimg), 2.51 (10), 3.82 (30), "
        "6.03 (60) (Table 12).",
    ]


def _first_last(losses: Sequence[float]) -> str:
    """Mean loss over the first and the last 10 steps, ``"a / b"``."""
    return f"{_avg(losses[:10]):.4g} / {_avg(losses[-10:]):.4g}"


def _avg(v):
    return sum(v) / len(v) if v else math.nan
