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

Here: sigma ~ EDM training log-normal (ln sigma ~ N(-1.2, 1.2^2)), lambda(sigma) the EDM weighting,
per-sample pixel loss = mean over pixels, feature loss = mean over feature dims of the registered
feature network's FID feature (differentiable through
:meth:`~skiptune.metrics.FeatureExtractor.float_features`); Adam with cosine learning-rate decay;
raw rho is projected onto rho >= 0.001 after each step (rules need rho > 0). The learned rho
becomes a ``sites:`` rule, and FIDs of every variant are computed by :func:`skiptune.runs.sweep.run_sweep`
with the same seeds (so differences to the baseline are paired).
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
from skiptune.core.checksums import state_dict_sha256, tensor_sha256
from skiptune.core.errors import InputError
from skiptune.core.stats import t_interval
from skiptune.sampling import sampler_fields
from skiptune.train.loss import edm_weight

NAME = "finetune"
HELP = "learn per-site rho (raw / sigmoid) or all weights by feature-space score matching; compare FID (Tables 11, 12)"
PARAMS = ("raw", "sigmoid")
LOSSES = ("feature", "pixel", "hybrid")
RHO_FLOOR = 1e-3

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- losses ------------------------------------------------------------------------------------------------------------

def make_loss(kind: str, extractor=None, feature: str | None = None, feature_weight: float = 1.0) -> LossFn:
    """Per-sample loss ``(denoised, clean) -> [N]``: ``pixel`` = mean (D - y)^2 over pixels, ``feature`` =
    mean (f(D) - f(y))^2 over feature dims, ``hybrid`` = pixel + feature_weight * feature (seed 003, Sec. 5.3)."""
    if kind not in LOSSES:
        raise InputError(f"unknown loss {kind!r}; use one of {', '.join(LOSSES)}")
    if kind != "pixel" and extractor is None:
        raise InputError(f"the {kind} loss needs a feature network")
    feature = feature or (extractor.feature_for("fid") if extractor is not None else None)

    def pixel(d, y):
        return (d - y).pow(2).flatten(1).mean(1)

    def feat(d, y):
        f_d = extractor.float_features(d, features=[feature])[feature]
        with torch.no_grad():
            f_y = extractor.float_features(y, features=[feature])[feature]
        return (f_d - f_y).pow(2).mean(1).to(d.device)

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
    sigma_data = float(getattr(net, "sigma_data", 0.5))
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
    sigma_data = float(getattr(net, "sigma_data", 0.5))
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


def run_finetune(net: nn.Module, images: torch.Tensor, *, extractor, ref, params: Sequence[str] = PARAMS,
                 rho_loss: str = "feature", rho_steps: int = 50, rho_batch: int = 32, rho_lr: float = 0.02,
                 init_raw: float = 1.0, init_sigmoid: float = 0.9, sigmoid_max: float = 1.0,
                 full_steps: int = 60, full_checkpoints: Sequence[int] | None = None, full_batch: int = 32,
                 full_lr: float = 2e-4, feature_weight: float = 1.0, weighting: str = "edm",
                 compare_rules: Sequence[str] = ("const:0.7",), sampler: str = "heun", nfes: Sequence[int] = (9,),
                 seeds: str = "0-99", num_seed_sets: int = 3, fid_batch: int = 100, seed: int = 0,
                 labels: torch.Tensor | None = None, store=None, progress: bool = False,
                 model_id: str | None = None) -> AnalysisResult:
    """Learned rho (raw, sigmoid) and full fine-tuning vs the baseline and hand-set rules, by FID (Tables 11, 12).

    ``images``: training images in [-1, 1]; ``extractor`` the feature network of both the training
    loss and the FID, ``ref`` its reference :class:`~skiptune.metrics.FeatureSet`. ``params=()`` skips
    the rho fits, ``full_steps=0`` the full fine-tuning. Units in ``store``: each rho fit, the whole
    full fine-tuning (with its FIDs), and every FID point (via :func:`skiptune.runs.sweep.run_sweep`).
    """
    from skiptune.adapters import find_adapter
    from skiptune.experiment import Scorer
    from skiptune.runs.sweep import SweepSpec, run_sweep, seed_sets
    from skiptune.store import Store

    images = images_for(net, images)
    n = len(images)
    for p in params:
        if p not in PARAMS:
            raise InputError(f"unknown parametrisation {p!r}; use raw and/or sigmoid")
    if weighting not in ("edm", "none"):
        raise InputError(f"unknown weighting {weighting!r}; use edm or none")
    compare = [check_rule(net, r) for r in compare_rules]
    onehot = one_hot(net, labels, n)
    model_id = model_id or state_dict_sha256(net)
    feature = extractor.feature_for("fid")
    feat_cfg = {"extractor": extractor.name, "feature": feature, "weights_sha256": extractor.weights_sha256}
    sets = seed_sets(seeds, num_seed_sets)
    full_checkpoints = sorted(set(full_checkpoints or ([full_steps // 2, full_steps] if full_steps > 1
                                                       else [full_steps])) - {0}) if full_steps else []
    config = {"model": model_id, "data": tensor_sha256(images), "n": n, "seed": seed, "features": feat_cfg,
              "weighting": weighting,
              "rho": {"params": list(params), "loss": rho_loss, "steps": rho_steps, "batch": rho_batch, "lr": rho_lr,
                      "init_raw": init_raw, "init_sigmoid": init_sigmoid, "sigmoid_max": sigmoid_max,
                      "feature_weight": feature_weight},
              "full": {"steps": full_steps, "checkpoints": full_checkpoints, "batch": full_batch, "lr": full_lr,
                       "loss": "hybrid", "feature_weight": feature_weight},
              "fid": {**sampler_fields(sampler), "nfes": list(nfes), "seed_sets": sets,
                      "batch": fid_batch},
              "compare_rules": compare}
    tmp = None
    if store is None:  # FIDs go through the results store; keep them in a throw-away one
        tmp = tempfile.TemporaryDirectory()
        store = Store(Path(tmp.name) / "finetune.sqlite")
    try:
        # 1. learned rho (Table 11)
        fits = {}
        for p in params:
            init = init_raw if p == "raw" else init_sigmoid
            unit = {k: config[k] for k in ("model", "data", "seed", "features", "weighting")} | {
                "param": p, "loss": rho_loss, "steps": rho_steps, "batch": rho_batch, "lr": rho_lr, "init": init,
                "rho_max": sigmoid_max if p == "sigmoid" else None,
                "feature_weight": feature_weight if rho_loss == "hybrid" else None}
            fits[p] = cached(store, "finetune-rho", unit, lambda p=p, init=init: fit_rho(
                net, images, make_loss(rho_loss, extractor, feature, feature_weight), param=p, steps=rho_steps,
                batch=rho_batch, lr=rho_lr, init=init, rho_max=sigmoid_max, weighting=weighting, seed=seed,
                labels=onehot, progress=progress))
        methods = [("baseline", "none")] + [(f"Skip-Tuning {r}", r) for r in compare]
        methods += [(f"rho fine-tuned ({p})", _sites_rule(fits[p]["rho"])) for p in params]

        def fids(model, rules):  # FID points keyed by the full weights fingerprint, shared with `skiptune sweep`
            spec = SweepSpec(rules=list(dict.fromkeys(rules)), samplers=[sampler], nfes=list(nfes), seed_sets=sets,
                             batch=fid_batch)
            rows = run_sweep(model, spec, store=store, scorer=Scorer(extractor, ref), progress=progress)
            return {f"{r.rule}|{r.nfe}": list(r.estimate.values) for r in rows}

        rule_fids = fids(net, [r for _, r in methods])
        # 2. full fine-tuning (Table 12)
        full = None
        if full_steps:
            unit = {k: config[k] for k in ("model", "data", "seed", "features", "weighting", "full", "fid")}
            full = cached(store, "finetune-full", unit, lambda: finetune_weights(
                net, images, make_loss("hybrid", extractor, feature, feature_weight), steps=full_steps,
                batch=full_batch, lr=full_lr, weighting=weighting, seed=seed, labels=onehot,
                checkpoints=full_checkpoints, on_checkpoint=lambda step, m: fids(m, ["none"]), progress=progress))
    finally:
        if tmp is not None:
            store.close()
            tmp.cleanup()

    rows = []
    for nfe in nfes:
        base = rule_fids[f"none|{nfe}"]
        entries = [(name, rule, 0, rule_fids[f"{rule}|{nfe}"]) for name, rule in methods]
        if full is not None:
            ck = {str(k): v for k, v in full["checkpoints"].items()}  # JSON keys are strings once stored
            entries += [(f"full fine-tune ({step} steps)", "none", step * full_batch, ck[str(step)][f"none|{nfe}"])
                        for step in full_checkpoints]
        for name, rule, imgs, vals in entries:
            est = t_interval(vals)
            row = {"method": name, "sampler": sampler, "nfe": nfe, "rule": rule, "train_images": imgs,
                   "fid": est.mean, "fid_ci_low": est.ci_low, "fid_ci_high": est.ci_high}
            if name != "baseline":
                diff = t_interval([a - b for a, b in zip(vals, base, strict=True)])
                row |= {"fid_diff": diff.mean, "fid_diff_ci_low": diff.ci_low, "fid_diff_ci_high": diff.ci_high}
            rows.append(row)
    summary: dict = {"num_sites": len(find_adapter(net).sites(net))}
    for p in params:
        rho = fits[p]["rho"]
        summary[f"learned rho ({p})"] = _sites_rule(rho)
        summary[f"sites with rho > 1 ({p})"] = sum(r > 1 for r in rho)
        summary[f"rho loss first/last 10 steps ({p})"] = f"{_avg(fits[p]['loss'][:10]):.4g} / " \
                                                         f"{_avg(fits[p]['loss'][-10:]):.4g}"
    if full is not None:
        summary["full fine-tune loss first/last 10 steps"] = f"{_avg(full['loss'][:10]):.4g} / " \
                                                             f"{_avg(full['loss'][-10:]):.4g}"
    for row in rows:
        summary[f"FID {row['method']} NFE {row['nfe']}"] = row["fid"]
    notes = [
        f"Training images: {n}; draws (image, ln sigma ~ N(-1.2, 1.2^2), noise) from a generator seeded {seed}; "
        f"loss weighting: {'EDM lambda(sigma)' if weighting == 'edm' else 'none'}; feature network "
        f"{extractor.name} ('{feature}').",
        f"rho fits: {rho_loss} loss, Adam lr {rho_lr:g} cosine-decayed over {rho_steps} steps of batch {rho_batch}; "
        f"raw starts at rho = {init_raw:g} (projected onto rho >= {RHO_FLOOR:g}); sigmoid rho = "
        f"{sigmoid_max:g} * sigmoid(theta) starts at {init_sigmoid:g}. Learned rho rounded to 4 digits in the rule.",
        (f"Full fine-tuning: all weights of a copy, L_pixel + {feature_weight:g} L_feature, Adam lr {full_lr:g} "
         f"cosine-decayed over {full_steps} steps of batch {full_batch} ({full_steps * full_batch} images; the paper "
         f"trains 4-60 M images), no EMA; FID at steps {full_checkpoints}." if full_steps else
         "Full fine-tuning skipped."),
        f"FID: {sampler} at NFE {', '.join(map(str, nfes))}, {len(sets)} seed sets ({', '.join(sets)}), "
        f"{extractor.name} features vs the reference ({ref.n} images); mean and 95% t-interval over seed sets; "
        "fid_diff paired against the baseline on the same seeds.",
        "Paper (EDM ImageNet-64, ResNet-101 loss): Heun 9 NFE 35.12 -> 215.09 (raw rho), 18.92 (sigmoid); 19 NFE "
        "3.64 -> 112.15, 2.77 (Table 11); full fine-tuning 19 NFE 2.60 -> 2.59 (4 Mimg), 2.51 (10), 3.82 (30), "
        "6.03 (60) (Table 12).",
    ]
    return AnalysisResult(NAME, config, rows, summary, notes)


def _avg(v):
    return sum(v) / len(v) if v else math.nan


# -- command line ------------------------------------------------------------------------------------------------------
