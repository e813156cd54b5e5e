"""Our checkpoint format, and :func:`load_model`, the one entry point for every supported model.

A skiptune checkpoint is one ``.safetensors`` file: the tensors, plus the network's class name and
constructor kwargs as JSON in the safetensors metadata (key ``skiptune``). Loading it runs no code
from the file. A readable copy of the config is written next to it as ``<name>.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from skiptune.core.assets import SHIPPED_MODELS, asset_path
from skiptune.core.checksums import state_dict_sha256
from skiptune.core.errors import CheckpointError, InputError, MissingFileError
from skiptune.io.edm_pickle import load_edm_pickle
from skiptune.io.ldm import is_ldm_state, load_ldm, read_ldm_checkpoint
from skiptune.io.openai_unet import is_openai_unet_state, load_openai_unet
from skiptune.io.uvit import file_contents, is_uvit_state, load_strict, load_uvit, read_state_dict
from skiptune.nets.presets import build_network, build_preset, preset_config, preset_names, preset_seed

FORMAT = "skiptune-net"
FORMAT_VERSION = 1


def network_config(net: nn.Module) -> dict:
    """``{'class_name', 'kwargs'}`` of one of our networks (recorded when it was built or loaded)."""
    cfg = getattr(net, "skiptune_config", None)
    if cfg is None:
        raise InputError(f"{type(net).__name__} has no recorded config: build it with skiptune.nets.build_network "
                         "or skiptune.load_model so that it can be saved")
    return cfg


def save_checkpoint(net: nn.Module, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``net`` as a safetensors checkpoint with its config (and ``extra`` metadata)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"checkpoint path must end in .safetensors, got {path}")
    cfg = {"format": FORMAT, "version": FORMAT_VERSION, **network_config(net), "extra": extra or {}}
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp), metadata={"skiptune": json.dumps(cfg)})
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """The JSON config stored in a skiptune safetensors checkpoint."""
    from safetensors import safe_open

    _check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file (corrupt or truncated?): {exc}") from None
    if "skiptune" not in meta:
        raise CheckpointError(f"{path}: a safetensors file without a skiptune config; it was not written by "
                              "skiptune.save_checkpoint (for a raw state dict use load_model(path, arch=PRESET))")
    cfg = json.loads(meta["skiptune"])
    if cfg.get("format") != FORMAT or cfg.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {cfg.get('format')!r} v{cfg.get('version')}")
    return cfg


def _check_safetensors(path: str | os.PathLike) -> None:
    """A file that does not even start like a safetensors file (an 8-byte header length, then a JSON header) is
    an error saying what it is instead (a text file, a torch archive, ...)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = os.path.getsize(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read this file ({exc.strerror or exc})") from None
    if len(head) < 9 or head[8:9] != b"{" or int.from_bytes(head[:8], "little") > size - 8:
        if len(head) == 9 and head[8:9] == b"{":
            raise CheckpointError(f"{path}: a truncated safetensors file ({size} bytes, shorter than its header "
                                  "says); copy or download it again")
        raise CheckpointError(f"{path}: not a safetensors file: it is {file_contents(path)}")


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    _check_safetensors(path)
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read tensors (corrupt or truncated?): {exc}") from None


def _load_into(net: nn.Module, state: dict, path: Path, what: str) -> nn.Module:
    """``state`` into ``net`` (strict); a mismatch is summarised (counts, the first keys of each kind, and what the
    file's keys look like), see :func:`skiptune.io.uvit.load_strict`."""
    return load_strict(net, state, path, what).eval()


def _described(net: nn.Module, spec: str | os.PathLike, loader: str, extra: dict | None = None) -> LoadedModel:
    return LoadedModel(net, str(spec), loader, network_config(net), dict(extra or {}))


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Load a checkpoint written by :func:`save_checkpoint` (with its metadata: :func:`open_model`)."""
    return _read_checkpoint(Path(path))[0]


def _read_checkpoint(path: Path) -> tuple[nn.Module, dict]:
    cfg = read_checkpoint_config(path)
    net = build_network(cfg["class_name"], cfg["kwargs"])
    return _load_into(net, _load_state(path), path, f"{cfg['class_name']}({cfg['kwargs']})"), cfg


@dataclass(eq=False)
class LoadedModel:
    """A network as loaded, with what describes it.

    ``net``: the denoiser in eval mode; ``source``: what was asked for (a path, preset or shipped name);
    ``loader``: how it was read (``preset``, ``skiptune``, ``state-dict``, ``uvit``, ``openai-unet``, ``ldm``,
    ``edm-pickle``, ``diffusers``); ``network``: ``{'class_name', 'kwargs'}`` to rebuild it (empty for a diffusers
    folder); ``extra``: the checkpoint's metadata (e.g. the training step and data set of a skiptune
    checkpoint; for a preset ``{'init_seed': N}``, the seed of its random weights; empty for other
    formats); ``sha256``: of the state dict, computed on first use.
    """

    net: nn.Module
    source: str
    loader: str
    network: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @cached_property
    def sha256(self) -> str:
        return state_dict_sha256(self.net)


def load_model(spec: str | os.PathLike, *, arch: str | None = None, trust_code: bool = False,
               key: str = "ema") -> nn.Module:
    """The network of :func:`open_model` (same arguments), ready for :func:`skiptune.skip_tuning`."""
    return open_model(spec, arch=arch, trust_code=trust_code, key=key).net


def open_model(spec: str | os.PathLike, *, arch: str | None = None, trust_code: bool = False,
               key: str = "ema") -> LoadedModel:
    """Load any supported model, with its description (:class:`LoadedModel`).

    ``spec`` is a shipped model's name (``demo-digits``), a preset name (a randomly initialised network,
    e.g. ``adm-tiny``, seeded by :func:`~skiptune.nets.presets.preset_seed` so that loads agree), a skiptune
    ``.safetensors`` checkpoint, an EDM network pickle (``.pkl``, loaded safely unless
    ``trust_code``; ``key`` picks the entry, default ``ema``), or a raw state dict
    (``.safetensors``/``.pt``/``.pth``) when ``arch`` names the preset it belongs to. A public
    U-ViT ``.pth`` state dict needs no ``arch`` when exactly one U-ViT preset matches its shapes, nor does a
    guided-diffusion / consistency_models ``.pt`` when exactly one OpenAI UNet preset does, nor a CompVis
    latent-diffusion ``.ckpt`` when exactly one LDM preset does (:mod:`skiptune.io.ldm`; its first stage decodes
    through ``load_decoder(the .ckpt)``).
    A folder written by diffusers' ``save_pretrained`` (a ``UNet2DModel``/``UNet2DConditionModel``, or a
    pipeline with ``unet/`` and ``scheduler/``) loads as a :class:`~skiptune.io.diffusers.DiffusersDenoiser`
    (needs ``pip install 'skiptune[diffusers]'``).
    The network is the preconditioned denoiser in eval mode: ``net(x, sigma, class_labels) -> x0``.
    """
    text = str(spec)
    if text in SHIPPED_MODELS and not Path(text).exists():
        text = str(asset_path(SHIPPED_MODELS[text]))
    path = Path(text)
    if not path.exists():
        try:
            preset_config(text)
        except ValueError:
            raise MissingFileError(f"{text!r} is neither an existing file nor a preset name (nor a shipped model: "
                                   f"{', '.join(SHIPPED_MODELS)}); presets: {', '.join(preset_names())}") from None
        if arch is not None:
            raise InputError("give either a preset name or a file with arch=PRESET, not both")
        seed = preset_seed(text)  # random weights, but the same ones on every load
        return _described(build_preset(text, seed=seed), spec, "preset", {"init_seed": seed})
    if path.is_dir():
        from skiptune.io.diffusers import diffusers_layout, load_diffusers

        if diffusers_layout(path) is None:
            raise CheckpointError(f"{path} is a directory but not a diffusers model or pipeline folder; expected a "
                                  ".safetensors checkpoint, an EDM .pkl file or a diffusers save_pretrained folder")
        if arch is not None:
            raise InputError("arch does not apply to a diffusers folder, which carries its own config")
        return LoadedModel(load_diffusers(path), str(spec), "diffusers")
    suffix = path.suffix.lower()
    if arch is not None:
        preset_config(arch)  # an unknown preset fails before the file is read
        if suffix == ".ckpt":
            state = read_ldm_checkpoint(path)
        else:
            state = _load_state(path) if suffix == ".safetensors" else read_state_dict(path)
        if is_ldm_state(state):  # a latent-diffusion checkpoint: model.diffusion_model.*, cond_stage_model.*, ...
            return _described(load_ldm(path, arch, state=state), spec, "ldm")
        if is_uvit_state(state):  # the public U-ViT naming, without our wrapper's "model." prefix
            return _described(load_uvit(path, arch, state=state), spec, "uvit")
        if is_openai_unet_state(state):  # guided-diffusion / consistency_models naming, likewise
            return _described(load_openai_unet(path, arch, state=state), spec, "openai-unet")
        return _described(_load_into(build_preset(arch), state, path, f"preset {arch}"), spec, "state-dict")
    if suffix == ".safetensors":
        net, cfg = _read_checkpoint(path)
        return _described(net, spec, "skiptune", cfg.get("extra", {}))
    if suffix in (".pkl", ".pickle"):
        return _described(load_edm_pickle(path, key=key, trust_code=trust_code), spec, "edm-pickle")
    if suffix == ".ckpt":  # a CompVis latent-diffusion checkpoint
        return _described(load_ldm(path), spec, "ldm")
    if suffix in (".pt", ".pth"):  # a raw state dict: only U-ViT's and OpenAI UNets' can be recognised without arch
        state = read_state_dict(path)
        if is_openai_unet_state(state):
            return _described(load_openai_unet(path, state=state), spec, "openai-unet")
        return _described(load_uvit(path, state=state), spec, "uvit")
    raise CheckpointError(f"{path}: unsupported file type {suffix!r}; expected a skiptune .safetensors checkpoint, "
                          "an EDM network .pkl, a latent-diffusion .ckpt, or a state dict with arch=PRESET")
