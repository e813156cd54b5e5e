"""Training loop (EDM, DDPM or S²-DM objective) with EMA, checkpoints, a JSON-lines log and bit-exact resume.

Objectives: ``edm`` trains an ``EDMPrecond`` network with :class:`~skiptune.train.loss.EDMLoss`;
``ddpm`` and ``s2dm`` train a discrete eps-prediction ``DDPMPrecond`` with
:class:`~skiptune.train.s2dm.DiscreteLoss` (the batch objective is the mean of per-image per-pixel
means, as in the S²-DM code). Either way the logged loss is a per-pixel mean.

Randomness. Every random draw of step s is a pure function of ``(seed, s)``, so a run needs no
generator state to resume and an interrupted run replays exactly:
- data order: image positions ``s*B .. s*B+B-1`` of an endless stream of epochs, epoch e being
  ``randperm(N)`` under the seed ``H(seed, 'epoch', e)`` (sampling without replacement per epoch);
- sigma or timesteps, noise, flips and label dropout: a ``torch.Generator`` seeded with ``H(seed, 'step', s)``;
- dropout inside the network (which uses torch's global generator): the global generator is seeded
  with ``H(seed, 'dropout', s)`` inside ``torch.random.fork_rng``, so the caller's state is untouched;
- initial weights: built under ``H(seed, 'init', 0)``.
``H`` is the first 63 bits of a sha256 of its arguments. Bit-exact replay also needs the same
device, torch build and CPU thread count (reductions are ordered by thread; a resume with another
thread count warns).

EMA (EDM, Karras et al. 2022, App. F.1): after step s, with n = s*B images seen before the step and
half-life h = min(ema_halflife_images, ema_rampup_ratio * n),
``beta = 0.5 ** (B / max(h, 1e-8))`` and ``ema <- beta ema + (1 - beta) net`` (so the first step
copies the network).

Files in ``out``: ``config.json`` (resolved config, data fingerprint, versions, git revision);
``train-log.jsonl`` (one line per ``log_every`` steps: step, images, loss = mean per-pixel weighted
loss since the previous line, lr, images_per_s, seconds of training so far); an EMA snapshot
``ema-SSSSSSS.safetensors`` every ``save_every`` steps and at a graceful stop; ``network.safetensors``
(the final EMA, what :func:`skiptune.load_model` reads); ``training-state.pt`` (raw net, EMA, Adam
state, step; written atomically after the snapshot, so a kill at any moment leaves a usable state).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from skiptune.core.errors import InputError, MissingFileError
from skiptune.core.provenance import environment
from skiptune.io.checkpoint import open_model, save_checkpoint
from skiptune.metrics.extractor import file_sha256
from skiptune.nets.presets import build_network
from skiptune.train.config import RESUMABLE_CHANGES, TrainConfig, resolve_network
from skiptune.train.data import ImageDataset, load_dataset
from skiptune.train.loss import EDMLoss
from skiptune.train.s2dm import DiscreteLoss

STATE_FORMAT = "skiptune-train-state"
STATE_VERSION = 1
STATE_FILE = "training-state.pt"
LOG_FILE = "train-log.jsonl"
CONFIG_FILE = "config.json"
FINAL_FILE = "network.safetensors"


@dataclass
class StepInfo:
    """Passed to the ``callback`` after every step (``step`` = steps completed so far)."""

    step: int
    total_steps: int
    loss: float
    lr: float


@dataclass
class TrainResult:
    """What a call of :func:`train` did. ``losses`` are this call's per-step per-pixel losses."""

    out_dir: Path
    network: Path
    state: Path
    config: dict
    start_step: int
    steps: int
    images: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed: bool = False
    stopped: bool = False

    @property
    def seconds_per_step(self) -> float:
        done = self.steps - self.start_step
        return self.seconds / done if done else float("nan")


def derive_seed(seed: int, purpose: str, index: int) -> int:
    """``H(seed, purpose, index)``: a 63-bit seed, independent of any library's generator."""
    digest = hashlib.sha256(f"skiptune-train:{seed}:{purpose}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class EpochSampler:
    """Batch ``s`` = positions ``s*B .. s*B+B-1`` of a stream of per-epoch random permutations."""

    def __init__(self, size: int, batch: int, seed: int):
        self.size, self.batch, self.seed = size, batch, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._cache[epoch] = torch.randperm(self.size, generator=g)
        return self._cache[epoch]

    def indices(self, step: int) -> torch.Tensor:
        pos, end, parts = step * self.batch, (step + 1) * self.batch, []
        while pos < end:
            epoch, offset = divmod(pos, self.size)
            take = min(self.size - offset, end - pos)
            parts.append(self._perm(epoch)[offset:offset + take])
            pos += take
        return torch.cat(parts)


def ema_beta(batch: int, images_seen: int, halflife_images: float, rampup_ratio: float | None) -> float:
    """EDM's EMA decay per step: ``0.5 ** (batch / max(h, 1e-8))``, h the (ramped-up) half-life in images."""
    h = halflife_images if rampup_ratio is None else min(halflife_images, images_seen * rampup_ratio)
    return 0.5 ** (batch / max(h, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, beta: float) -> None:
    """``ema <- beta ema + (1 - beta) net`` for parameters; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b)


def _atomic_torch_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (by a run that died after its last saved state)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            break  # a line cut short by the interruption, and everything after it
    path.write_text("".join(k + "\n" for k in keep))


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): warm-up, then constant, then the optional
    linear cool-down from ``lr_cooldown_start`` to 0 after the last step."""
    lr = config.lr * min((step + 1) * config.batch / max(config.lr_warmup_images, 1e-8), 1.0)
    c = config.lr_cooldown_start
    if c is not None and step >= c:
        total = config.total_steps()
        lr *= (total - step) / (total - c)
    return lr


def _schedule_change(before: dict, resolved: dict, done: int) -> str | None:
    """A resume may set or move the cool-down, or change the length of a cooling run, only where that
    leaves the learning rates of the ``done`` steps already taken unchanged."""
    inf = float("inf")
    old_c, new_c = (r["train"].get("lr_cooldown_start") for r in (before, resolved))
    old_c, new_c = (inf if c is None else c for c in (old_c, new_c))
    if old_c == new_c and (before["total_steps"] == resolved["total_steps"] or old_c >= done):
        return None
    if old_c != new_c and min(old_c, new_c) >= done:
        return None
    return (f"lr_cooldown_start/steps: {done} steps were taken and the cool-down began at step "
            f"{old_c if old_c != inf else 'never'}; the new schedule would change their learning rates")


def _differing_keys(a: dict, b: dict) -> list[str]:
    """The keys whose values differ between ``a`` and ``b`` (a key missing from one counts as None)."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _load_state(path: Path, resolved: dict, device: torch.device) -> dict:
    """Read a training state and check that it belongs to the run described by ``resolved``."""
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise InputError(f"{path}: not a skiptune training state (format {state.get('format')!r})")
    before = json.loads(state["resolved"])
    # fields added to TrainConfig after a state was written take their defaults (what that run used)
    before["train"] = {**TrainConfig().to_dict(), **before["train"]}
    free = (*RESUMABLE_CHANGES, "lr_cooldown_start")
    old, new = ({k: v for k, v in r["train"].items() if k not in free} for r in (before, resolved))
    diff = _differing_keys(old, new)
    schedule = _schedule_change(before, resolved, int(state["step"]))
    if schedule:
        diff.append(schedule)
    if before["network"] != resolved["network"]:
        diff.append("network")
    if before["dataset"]["fingerprint"] != resolved["dataset"]["fingerprint"]:
        diff.append("data (the images differ)")
    if diff:
        raise InputError(f"cannot resume {path.parent}: the config differs in {', '.join(diff)}")
    if state.get("threads") != torch.get_num_threads():
        warnings.warn(f"resuming {path.parent} with {torch.get_num_threads()} CPU threads; it ran with "
                      f"{state.get('threads')}: the result will not be bit-identical to an uninterrupted run",
                      stacklevel=3)
    return state


def _warm_start(path: str, class_name: str, kwargs: dict, nets: tuple[nn.Module, ...]) -> dict:
    """Copy the weights of the network in ``path`` (a skiptune checkpoint or an EDM pickle, read without
    running code from it) into ``nets``, which must be the same network, and return where they came from."""
    if not Path(path).exists():
        raise MissingFileError(f"init_from: no checkpoint at {path}")
    loaded = open_model(path)
    if not loaded.network:
        raise InputError(f"init_from {path}: a {type(loaded.net).__name__} cannot be trained here; give a skiptune "
                         ".safetensors checkpoint or an EDM network pickle")
    have = json.loads(json.dumps(loaded.network))  # tuples as lists, as in this run's resolved config
    if have["class_name"] != class_name or have["kwargs"] != kwargs:
        what = f"class {have['class_name']} vs {class_name}" if have["class_name"] != class_name else \
            ", ".join(f"{k}={have['kwargs'].get(k)!r} vs {kwargs.get(k)!r}"
                      for k in _differing_keys(have["kwargs"], kwargs))
        raise InputError(f"init_from {path} holds another network than this run would train ({what}): give the "
                         "network options it was trained with (a skiptune checkpoint's .json file lists them; "
                         "--net-json takes any network's kwargs)")
    for net in nets:
        net.load_state_dict(loaded.net.state_dict())
    extra = loaded.extra
    return {"path": str(path), "sha256": file_sha256(path), "step": extra.get("step"), "images": extra.get("images")}


def train(config: TrainConfig, *, resume: bool = False, data: ImageDataset | None = None,
          callback: Callable[[StepInfo], bool | None] | None = None) -> TrainResult:
    """Train a network as ``config`` says (EDM, DDPM or S²-DM objective); see the module docstring for the files.

    ``resume=True`` continues from ``out/training-state.pt`` when it exists (the config may change
    only in :data:`~skiptune.train.config.RESUMABLE_CHANGES`, e.g. more steps) and starts afresh
    otherwise; without it an ``out`` that already holds a run is an error. ``data`` overrides loading
    ``config.data``. ``callback(info)`` runs after every step; returning True stops the run
    gracefully (state and an EMA snapshot are saved at that step, ``stopped=True``), raising aborts it.
    """
    config.validate()
    out = Path(config.out)
    state_path, log_path = out / STATE_FILE, out / LOG_FILE
    if not resume and (state_path.exists() or log_path.exists()):
        raise InputError(f"{out} already holds a training run: resume it or choose another output directory")
    if data is None:
        data = load_dataset(config.data, "train", resolution=config.resolution, size=config.data_size,
                            seed=config.data_seed)
    class_name, kwargs = resolve_network(config, data)
    device = torch.device(config.device)
    total, batch = config.total_steps(), config.batch
    resolved = {"train": config.to_dict(), "network": {"class_name": class_name, "kwargs": kwargs},
                "dataset": data.describe(), "total_steps": total}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "init", 0))
        net = build_network(class_name, kwargs)
    net.to(device).train().requires_grad_(True)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, betas=config.betas, eps=config.adam_eps)

    start, elapsed = 0, 0.0
    resumed = resume and state_path.exists()
    if resumed:
        state = _load_state(state_path, resolved, device)
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start, elapsed = int(state["step"]), float(state.get("seconds", 0.0))
        if start > total:
            raise InputError(f"cannot resume {out} for {total} steps: it has already run {start}")
        _truncate_log(log_path, start)
        if "init" in (before := json.loads(state["resolved"])):
            resolved["init"] = before["init"]
    elif config.init_from is not None:
        resolved["init"] = _warm_start(config.init_from, class_name, kwargs, (net, ema))

    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps({**resolved, "provenance": environment()}, indent=2) + "\n")

    images = data.images.to(device)
    labels = data.labels.to(device) if data.labels is not None else None
    sampler = EpochSampler(len(data), batch, config.seed)
    if config.objective == "edm":
        loss_fn = EDMLoss(config.P_mean, config.P_std, config.label_dropout)
    else:
        loss_fn = DiscreteLoss(config.objective, config.skip_span, config.tau, config.label_dropout)
    extra = {"dataset": data.name, "objective": config.objective, "num_classes": data.num_classes if config.cond else 0,
             "class_names": data.class_names if config.cond else [], "value_range": [-1.0, 1.0],
             "train_config": resolved["train"]}

    losses: list[float] = []
    window: list[float] = []
    t0 = t_log = time.perf_counter()

    def save(step: int, final: bool) -> Path:
        meta = {**extra, "step": step, "images": step * batch}
        path = save_checkpoint(ema, out / (FINAL_FILE if final else f"ema-{step:07d}.safetensors"), extra=meta)
        _atomic_torch_save({"format": STATE_FORMAT, "version": STATE_VERSION, "step": step,
                            "threads": torch.get_num_threads(), "seconds": elapsed + time.perf_counter() - t0,
                            "resolved": json.dumps(resolved), "rng": f"stateless: H(seed={config.seed}, purpose, step)",
                            "net": net.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict()},
                           state_path)
        return path

    from tqdm import tqdm


    bar = tqdm(total=total, initial=start, disable=not config.progress, unit="step", dynamic_ncols=True)
    stopped = False
    network_path = out / FINAL_FILE
    with open(log_path, "a") as log:
        for step in range(start, total):
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = sampler.indices(step).to(device)
            y = images[idx]
            gen = torch.Generator(device=device).manual_seed(derive_seed(config.seed, "step", step))
            if config.xflip:
                flip = torch.rand([batch, 1, 1, 1], generator=gen, device=device) < 0.5
                y = torch.where(flip, y.flip(3), y)
            one_hot = F.one_hot(labels[idx], data.num_classes).float() if config.cond else None
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(derive_seed(config.seed, "dropout", step))
                # EDM: per-element weighted errors (summed per image); DDPM/S²-DM: per-image pixel means
                per_element = loss_fn(net, y, one_hot, gen)
                objective = per_element.sum() / batch
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
            value = per_element.detach().mean().item()
            if not torch.isfinite(objective):
                raise FloatingPointError(f"the loss is not finite at step {step + 1} (lr {lr:g}): try a lower lr "
                                         "or grad_clip")
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            optimizer.step()
            update_ema(ema, net, ema_beta(batch, step * batch, config.ema_halflife_images, config.ema_rampup_ratio))
            done = step + 1
            losses.append(value)
            window.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if done % config.log_every == 0 or done == total:
                now = time.perf_counter()
                log.write(json.dumps({"step": done, "images": done * batch, "loss": sum(window) / len(window),
                                      "lr": lr, "images_per_s": len(window) * batch / max(now - t_log, 1e-9),
                                      "seconds": elapsed + now - t0}) + "\n")
                log.flush()
                window, t_log = [], now
            stop = bool(callback(StepInfo(done, total, value, lr))) if callback is not None else False
            if stop and done < total:
                network_path = save(done, final=False)
                stopped = True
                break
            if config.save_every and done % config.save_every == 0 and done < total:
                save(done, final=False)
    bar.close()
    end = start + len(losses)
    if not stopped:
        network_path = save(end, final=True)
    return TrainResult(out, network_path, state_path, {**resolved}, start, end, end * batch, losses,
                       time.perf_counter() - t0, resumed, stopped)
