"""diffusers models as skiptune denoisers: local ``from_pretrained`` folders, offline.

Two folder layouts are recognised (from their JSON files alone, so that the error without diffusers
is clear):

- a model folder: ``config.json`` whose ``_class_name`` is ``UNet2DModel`` or ``UNet2DConditionModel``
  (what ``unet.save_pretrained(dir)`` writes); if it is a pipeline's ``unet/`` subfolder, the
  sibling ``scheduler/`` is used for the noise schedule;
- a pipeline folder: ``model_index.json`` with a ``unet/`` subfolder, and ``scheduler/`` for the
  schedule (what ``pipe.save_pretrained(dir)`` writes).

The noise schedule and the prediction type (``epsilon`` or ``v_prediction``) come from
``scheduler/scheduler_config.json``; without one, DDPM's linear schedule (1e-4..0.02, T = the UNet's
``num_train_timesteps`` or 1000) and eps-prediction are assumed, and recorded in ``source``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skiptune.adapters.diffusers import (
    DEFAULT_SCHEDULE,
    INSTALL_HINT,
    UNET_CLASSES,
    attach_schedule,
    require_diffusers,
    schedule_from_config,
    staged_unet,
)
from skiptune.core.errors import CheckpointError, InputError
from skiptune.sampling.denoisers import VPDenoiser

PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}


class DiffusersDenoiser(VPDenoiser):
    """A diffusers UNet as ``net(x, sigma, class_labels=None, **cond) -> x0`` (REFERENCE.md Sec. 2).

    A :class:`~skiptune.sampling.VPDenoiser` over the UNet (``model``), with the attributes skiptune's
    generation reads: ``img_channels``, ``img_resolution``, ``label_dim`` (``num_class_embeds`` of a
    UNet with a class embedding table, else 0), ``alphas_cumprod``. Class labels may be one-hot rows
    (converted to indices) or indices. ``UNet2DConditionModel`` needs ``encoder_hidden_states``
    (e.g. text embeddings) as a keyword. Output channels beyond ``img_channels`` (a learned variance)
    are dropped.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, *, prediction: str = "eps",
                 timesteps: str = "nearest", source: dict | None = None):
        super().__init__(unet, alphas_cumprod, prediction=prediction, timesteps=timesteps)
        cfg = unet.config
        self.register_buffer("alphas_cumprod", torch.as_tensor(alphas_cumprod, dtype=torch.float64),
                             persistent=False)
        self.img_channels = int(cfg.in_channels)
        size = cfg.sample_size
        self.img_resolution = int(size[0] if isinstance(size, (list, tuple)) else size) if size else None
        embedding = getattr(unet, "class_embedding", None)
        self.label_dim = int(embedding.num_embeddings) if isinstance(embedding, nn.Embedding) else 0
        self.source = dict(source or {})

    def call_model(self, x_vp: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                   **cond: Any) -> torch.Tensor:
        if not self.label_dim:
            class_labels = None
        elif class_labels is not None and class_labels.is_floating_point():
            class_labels = class_labels.reshape(-1, self.label_dim).argmax(dim=1)
        if type(self.model).__name__ == "UNet2DConditionModel" and cond.get("encoder_hidden_states") is None:
            raise InputError("a UNet2DConditionModel needs encoder_hidden_states (e.g. text embeddings of shape "
                             "[batch, tokens, cross_attention_dim]); pass them as a keyword to the denoiser")
        if class_labels is not None:
            cond["class_labels"] = class_labels
        stages = staged_unet(self.model)  # a feature-cache policy is attached: run the UNet in its stages
        if stages is not None:
            out = stages.forward(x_vp, t, **cond)
        else:
            out = self.model(x_vp, t, return_dict=False, **cond)[0]
        return out[:, : self.img_channels]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON: {exc}") from None


def diffusers_layout(path: str | os.PathLike) -> tuple[Path, Path | None] | None:
    """``(unet_dir, scheduler_dir or None)`` if ``path`` is a diffusers model or pipeline folder, else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "model_index.json").is_file() and (path / "unet" / "config.json").is_file():
        sched = path / "scheduler"
        return path / "unet", sched if (sched / "scheduler_config.json").is_file() else None
    if (path / "config.json").is_file() and _read_json(path / "config.json").get("_class_name") in UNET_CLASSES:
        sched = path.parent / "scheduler"
        return path, sched if (sched / "scheduler_config.json").is_file() else None
    return None


def load_diffusers(path: str | os.PathLike, *, timesteps: str = "nearest") -> DiffusersDenoiser:
    """Load a diffusers model or pipeline folder (see the module docstring) as a :class:`DiffusersDenoiser`.

    The UNet is read with ``from_pretrained(local_files_only=True)``; the scheduler's schedule is also
    attached to the bare UNet (:func:`~skiptune.adapters.diffusers.attach_schedule`), so sigma-dependent
    rules work when a diffusers pipeline drives it.
    """
    path = Path(path)
    layout = diffusers_layout(path)
    if layout is None:
        raise CheckpointError(f"{path}: not a diffusers folder (expected config.json with _class_name one of "
                              f"{', '.join(UNET_CLASSES)}, or model_index.json with a unet/ subfolder)")
    unet_dir, sched_dir = layout
    class_name = _read_json(unet_dir / "config.json").get("_class_name")
    if class_name not in UNET_CLASSES:
        raise CheckpointError(f"{unet_dir}: the UNet is a {class_name}; skiptune supports {', '.join(UNET_CLASSES)}")
    try:
        diffusers = require_diffusers()
    except ImportError:
        raise CheckpointError(f"{path} is a diffusers {class_name} folder; loading it needs the optional diffusers "
                              f"package: {INSTALL_HINT}") from None
    try:
        unet = getattr(diffusers, class_name).from_pretrained(str(unet_dir), local_files_only=True,
                                                            low_cpu_mem_usage=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{unet_dir}: diffusers could not load the {class_name}: {exc}") from None
    unet = unet.eval()
    if unet.config.get("time_embedding_type") == "fourier":
        raise CheckpointError(f"{path}: a score-SDE VE UNet (Fourier time features, called with sigma) is not a VP "
                              "model; attach rules to the UNet itself and sample with its diffusers pipeline")
    if sched_dir is not None:
        sched_cfg = _read_json(sched_dir / "scheduler_config.json")
        schedule_source = str(sched_dir / "scheduler_config.json")
    else:
        sched_cfg = {**DEFAULT_SCHEDULE, "num_train_timesteps": unet.config.get("num_train_timesteps") or 1000}
        schedule_source = "default (DDPM linear betas; no scheduler config found)"
    kind = sched_cfg.get("prediction_type") or "epsilon"
    if kind not in PREDICTIONS:
        raise CheckpointError(f"{path}: prediction_type {kind!r} is not supported; known: {', '.join(PREDICTIONS)}")
    try:
        abar = schedule_from_config(sched_cfg)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    attach_schedule(unet, abar)
    source = {"path": str(path), "class_name": class_name, "schedule": schedule_source,
              "prediction_type": kind, "diffusers_version": diffusers.__version__}
    net = DiffusersDenoiser(unet, abar, prediction=PREDICTIONS[kind], timesteps=timesteps, source=source)
    if (unet_dir.parent / "model_index.json").is_file():  # a latent pipeline: samples are autoencoder latents
        for name in ("vae", "vqvae"):
            if (unet_dir.parent / name / "config.json").is_file():
                vae = _read_json(unet_dir.parent / name / "config.json")
                net.latent_scale_factor = float(vae.get("scaling_factor") or 1.0)
                source["autoencoder"] = name
                break
    return net
