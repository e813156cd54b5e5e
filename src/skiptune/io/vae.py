"""Latents -> images with a diffusers autoencoder (``AutoencoderKL`` or ``VQModel``) from a local folder.

A latent diffusion model (U-ViT on ImageNet-256, LDM, Stable Diffusion) samples latents ``z`` in its own
scaled space; the image is ``autoencoder.decode(z / scale)``. :func:`load_decoder` reads the folder that
``save_pretrained`` writes (``config.json`` and ``diffusion_pytorch_model.safetensors``; e.g. a download
of ``stabilityai/sd-vae-ft-ema``, the Stable Diffusion VAE that U-ViT's ImageNet models use) and returns
a :class:`LatentDecoder`. A pipeline folder is accepted too: its ``vae/`` (or ``vqvae/``) subfolder is
used. So is a CompVis latent-diffusion ``.ckpt`` file: its ``first_stage_model`` is converted for diffusers'
``VQModel`` / ``AutoencoderKL`` (:func:`skiptune.io.ldm.load_ldm_decoder`), so ``--vae model.ckpt`` decodes an
LDM's samples with its own first stage.

Safety. Nothing is downloaded (``local_files_only=True``) and no code from the folder runs: the
model class is one of diffusers' own, chosen from ``config.json``'s ``_class_name``, and the weights
are read as tensors. safetensors weights are preferred when the folder has both kinds. A folder
with only a ``.bin`` pickle is accepted: diffusers 0.42 reads it with ``torch.load(weights_only=True)``,
and since older diffusers versions did not pass that flag, skiptune first reads every ``.bin`` file
itself with ``weights_only=True`` (torch's restricted unpickler, which builds tensors and plain
containers only) and refuses a file that needs anything else. So no ``trust_code`` switch exists here:
there is nothing to trust.

Scale. ``scale`` defaults to the folder config's ``scaling_factor`` (what diffusers' pipelines divide
by; 0.18215 for the Stable Diffusion VAE). U-ViT's ImageNet-256 code (baofff/U-ViT,
``libs/autoencoder.py``, ``FrozenAutoencoderKL``) uses ``scale_factor=0.18215`` as well, and decodes
``(1 / scale) * z``; skiptune divides, ``z / scale``, as diffusers does: the two differ by float32
rounding at most.

diffusers is optional (``pip install 'skiptune[diffusers]'``) and imported only when a decoder is
loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skiptune.adapters.diffusers import INSTALL_HINT, UNET_CLASSES, require_diffusers
from skiptune.core.checks import device as checked_device
from skiptune.core.checksums import file_sha256
from skiptune.core.errors import CheckpointError, InputError, MissingFileError

#: the autoencoder classes whose ``decode(z).sample`` is an image; ``kind`` also takes the short names
KINDS = ("AutoencoderKL", "VQModel")
_ALIASES = {"kl": "AutoencoderKL", "vq": "VQModel", "autoencoderkl": "AutoencoderKL", "vqmodel": "VQModel"}
#: weights files that save_pretrained writes, in diffusers' order of preference
SAFETENSORS = "diffusion_pytorch_model.safetensors"
PICKLE = "diffusion_pytorch_model.bin"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
_FOLDER_HINT = ("pass the folder that the autoencoder's save_pretrained wrote (config.json and "
                f"{SAFETENSORS}; e.g. a download of stabilityai/sd-vae-ft-ema), or a pipeline folder with a vae/ "
                "subfolder")


class LatentDecoder:
    """A loaded autoencoder that turns a model's latents into images: ``decode(z) = autoencoder.decode(z / scale)``.

    Attributes: ``model`` (the diffusers module, in eval mode, on ``device`` in ``dtype``), ``kind``
    (``'AutoencoderKL'`` or ``'VQModel'``), ``scale``, ``latent_channels`` (channels of the latents it
    decodes), ``out_channels`` (of the images), ``downsample`` (image side / latent side), ``sha256``
    (identity of the folder's files: see :func:`folder_sha256`), ``files`` (each file's sha256),
    ``source`` (the folder), ``device``, ``dtype``.
    """

    def __init__(self, model: torch.nn.Module, *, kind: str, scale: float, source: str | os.PathLike,
                 files: dict[str, str] | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        cfg = model.config
        self.model = model
        self.kind = kind
        self.scale = _check_scale(scale, f"{source}")
        if kind == "VQModel":  # VQModel.decode quantizes its input, whose width is the codebook's
            self.latent_channels = int(cfg.get("vq_embed_dim") or cfg.latent_channels)
        else:
            self.latent_channels = int(cfg.latent_channels)
        self.out_channels = int(cfg.out_channels)
        # each encoder block but the last halves the resolution (diffusers pipelines' vae_scale_factor)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.source = str(source)
        self.files = dict(files or {})
        self.sha256 = folder_sha256(self.files) if self.files else None
        self.device = torch.device(device)
        self.dtype = dtype

    def describe(self) -> dict[str, Any]:
        """What identifies this decoder in a run's record (the folder's sha256, the scale) and where it came from."""
        return {"kind": self.kind, "source": self.source, "sha256": self.sha256, "scale": self.scale,
                "latent_channels": self.latent_channels, "downsample": self.downsample, "dtype": str(self.dtype)}

    def image_shape(self, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the image decoded from latents of shape [C, H, W] or [N, C, H, W]."""
        return check_decoder_fits(self, latent_shape)

    def decode(self, latents: torch.Tensor | np.ndarray, *, batch_size: int = 16, progress: bool = False) \
            -> torch.Tensor:
        """Images ``autoencoder.decode(latents / scale)`` as float32 [N, C, H, W] on the CPU, nominally in [-1, 1]
        (not clamped).

        Latents are decoded ``batch_size`` at a time under ``torch.no_grad``: each batch is moved to the
        decoder's device, divided by ``scale`` in float32, cast to the decoder's dtype and decoded.
        Non-finite latents are decoded as they are.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}; pass e.g. batch_size=16")
        z = latents if isinstance(latents, torch.Tensor) else torch.as_tensor(np.asarray(latents))
        if not z.is_floating_point():
            raise InputError(f"latents must be a floating-point array, got {z.dtype}; pass the sampler's float "
                             "latents (latents.npz holds them as float32)")
        if z.ndim != 4:
            raise InputError(f"latents must have shape [N, C, H, W], got {list(z.shape)}; add the batch dimension "
                             "(latents[None]) for a single sample")
        self.image_shape(z.shape)
        n = z.shape[0]
        out = []
        from tqdm.auto import tqdm

        with torch.no_grad(), tqdm(total=n, desc=f"decode [{self.kind}]", unit="img", disable=not progress) as bar:
            for start in range(0, n, int(batch_size)):
                batch = z[start:start + int(batch_size)].to(device=self.device, dtype=torch.float32)
                images = self.model.decode((batch / self.scale).to(self.dtype)).sample
                out.append(images.to(device="cpu", dtype=torch.float32))
                bar.update(batch.shape[0])
        if not out:
            c, h, w = self.image_shape(z.shape)
            return torch.empty(0, c, h, w)
        return torch.cat(out)

    def __repr__(self) -> str:
        return (f"LatentDecoder({self.kind} from {self.source}, scale={self.scale:g}, latent_channels="
                f"{self.latent_channels}, downsample={self.downsample}, device={self.device}, dtype={self.dtype})")


def _check_scale(scale: Any, where: str) -> float:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(scale, bool) or not np.isfinite(value) or value <= 0:
        raise InputError(f"{where}: the latent scale must be a finite number > 0, got {scale!r}; pass the factor the "
                         "model's latents were multiplied by (0.18215 for the Stable Diffusion VAE)")
    return value


def check_decoder_fits(decoder: LatentDecoder, latent_shape: Sequence[int], *, model_scale: float | None = None) \
        -> tuple[int, int, int]:
    """Check, before any sampling, that ``decoder`` decodes latents of ``latent_shape`` ([C, H, W] or [N, C, H, W]:
    a model's ``(img_channels, img_resolution, img_resolution)``); returns the image shape ``(C, H, W)``.

    ``model_scale``, when given, is the factor the model's latents are scaled by (e.g. a U-ViT preset's
    ``latent_scale_factor``); a decoder with another ``scale`` is refused, since decoding would then be
    off by a constant factor.
    """
    shape = [int(s) for s in latent_shape]
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or min(shape[1:]) < 1:
        raise InputError(f"latent shape must be [C, H, W] or [N, C, H, W] with H, W >= 1, got {list(latent_shape)}")
    channels, h, w = shape
    if channels != decoder.latent_channels:
        raise InputError(f"the latents have {channels} channels but the {decoder.kind} at {decoder.source} decodes "
                         f"{decoder.latent_channels}-channel latents; pass the autoencoder the model was trained "
                         "with (--vae)")
    if model_scale is not None and not np.isclose(float(model_scale), decoder.scale, rtol=1e-6, atol=0):
        raise InputError(f"the model's latents are scaled by {float(model_scale):g} but the {decoder.kind} at "
                         f"{decoder.source} uses scale {decoder.scale:g}; pass the autoencoder the model was trained "
                         f"with, or scale={float(model_scale):g} (--vae-scale) if this is it")
    return decoder.out_channels, h * decoder.downsample, w * decoder.downsample


def folder_sha256(files: dict[str, str]) -> str:
    """The sha256 that identifies a decoder folder: of the lines ``'<file name> <file sha256>'``, sorted by name,
    over ``config.json`` and the weights files loaded (a change to either changes it)."""
    text = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


# --- the folder ------------------------------------------------------------------------------------------------


def _read_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON config ({exc}); {_FOLDER_HINT}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object (a diffusers model config), got "
                              f"{type(cfg).__name__}; {_FOLDER_HINT}")
    return cfg


def _autoencoder_folder(path: Path) -> Path:
    """The folder that holds the autoencoder's config.json: ``path`` itself, or a pipeline's vae/ (vqvae/)."""
    if not path.exists():
        raise MissingFileError(f"{path}: no such folder; {_FOLDER_HINT}. Nothing is downloaded")
    if not path.is_dir():
        from skiptune.io.uvit import file_contents

        raise CheckpointError(f"{path} is a file ({file_contents(path)}), not a folder: {_FOLDER_HINT}, or a CompVis "
                              "latent-diffusion .ckpt (its first stage decodes). Another original (non-diffusers) "
                              "checkpoint can be converted with diffusers' scripts/convert_vae_pt_to_diffusers.py")
    if (path / "config.json").is_file():
        return path
    if (path / "model_index.json").is_file():
        for name in ("vae", "vqvae"):
            if (path / name / "config.json").is_file():
                return path / name
        raise CheckpointError(f"{path} is a diffusers pipeline without a vae/ or vqvae/ subfolder (with a "
                              f"config.json): it holds no autoencoder; {_FOLDER_HINT}")
    if (path / "scheduler_config.json").is_file():
        raise CheckpointError(f"{path} is a diffusers scheduler folder, not an autoencoder; {_FOLDER_HINT}")
    raise CheckpointError(f"{path}: no config.json in this folder; {_FOLDER_HINT}")


def _resolve_kind(kind: str, class_name: Any, config_path: Path) -> str:
    if kind == "auto":
        wanted = None
    elif isinstance(kind, str) and (kind in KINDS or kind.lower() in _ALIASES):
        wanted = kind if kind in KINDS else _ALIASES[kind.lower()]
    else:
        raise InputError(f"unknown decoder kind {kind!r}; use 'auto' (read from config.json) or one of "
                         f"{', '.join(KINDS)}")
    if class_name in KINDS:
        if wanted is not None and wanted != class_name:
            raise CheckpointError(f"{config_path} describes a {class_name}, not a {wanted}; pass kind='auto' or "
                                  f"kind='{class_name}', or the folder of a {wanted}")
        return class_name
    supported = f"skiptune decodes with {' or '.join(KINDS)}"
    if class_name is None:
        raise CheckpointError(f"{config_path} has no _class_name, so it was not written by a diffusers model's "
                              f"save_pretrained; {_FOLDER_HINT}")
    if class_name in UNET_CLASSES or "UNet" in str(class_name) or "Transformer" in str(class_name):
        raise CheckpointError(f"{config_path.parent} holds a {class_name}, a denoising network, not an autoencoder; "
                              f"{_FOLDER_HINT} ({supported})")
    if "Autoencoder" in str(class_name) or "VAE" in str(class_name):
        raise CheckpointError(f"{config_path.parent} holds a {class_name}; {supported}: pass the folder of one of "
                              "those")
    raise CheckpointError(f"{config_path.parent} holds a {class_name}, not an autoencoder; {_FOLDER_HINT} "
                          f"({supported})")


def _weights_files(folder: Path) -> tuple[list[str], bool]:
    """Names of the weights files diffusers will read (an index and its shards, or one file) and whether they are
    safetensors; safetensors first, as diffusers prefers them."""
    for single, safe in ((SAFETENSORS, True), (PICKLE, False)):
        index = folder / f"{single}.index.json"
        if (folder / single).is_file():
            return [single], safe
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"{index}: not a readable weights index ({type(exc).__name__}: {exc}); "
                                      "copy it again from where the model was saved") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise MissingFileError(f"{folder}: {len(missing)} of the {len(shards)} weight shards listed in "
                                       f"{index.name} are missing ({', '.join(missing[:3])}); copy every shard into "
                                       "the folder")
            return [index.name, *shards], safe
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt",
                                                                                         ".pth", ".ckpt"))
    found = f" (it has {', '.join(others)}: save_pretrained names its weights {SAFETENSORS})" if others else ""
    raise MissingFileError(f"{folder}: config.json has no weights next to it: no {SAFETENSORS} or {PICKLE}{found}; "
                           "copy the weights saved with this config into the folder")


def _check_pickles(folder: Path, names: list[str]) -> None:
    """Read every ``.bin`` weights file with torch's weights-only unpickler: nothing but tensors may come out."""
    for name in names:
        if not name.endswith(".bin"):
            continue
        path = folder / name
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a weights-only torch file: {type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. skiptune never "
                                  f"runs code from a weights file; convert it to {SAFETENSORS} where it was made "
                                  "(save_pretrained writes safetensors by default)") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: expected a state dict (a dict of tensors), got {type(state).__name__}; "
                                  f"{_FOLDER_HINT}")
        del state


def _dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    if dtype in _DTYPES.values():
        return dtype
    raise InputError(f"unsupported decoder dtype {dtype!r}; use one of {', '.join(_DTYPES)}")


def _device(device: Any) -> torch.device:
    return checked_device(device, what="decoder device")


def _summary(keys: list[str], first: int = 3) -> str:
    return ", ".join(keys[:first]) + (f", ... ({len(keys) - first} more)" if len(keys) > first else "")


def load_decoder(path: str | os.PathLike, *, kind: str = "auto", scale: float | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32) -> LatentDecoder:
    """Load the autoencoder saved in ``path`` (see the module docstring) as a :class:`LatentDecoder`.

    ``kind``: ``'auto'`` (``config.json``'s ``_class_name``), ``'AutoencoderKL'`` or ``'VQModel'`` (a
    different class in the folder is an error). ``scale``: the factor the latents are divided by before
    decoding; None takes the config's ``scaling_factor``. ``device``, ``dtype``: where and in which
    precision the decoder runs (images come back as float32 on the CPU).

    Every problem is a :class:`~skiptune.core.errors.SkiptuneError` that names it: a missing folder or
    weights file (:class:`MissingFileError`), a folder of another kind (a UNet, a scheduler), weights
    that do not fit the config, a pickle that needs code (:class:`CheckpointError`), diffusers missing.
    """
    path = Path(path)
    device, dtype = _device(device), _dtype(dtype)
    if scale is not None:
        scale = _check_scale(scale, str(path))
    if path.is_file() and path.suffix.lower() == ".ckpt":  # a latent-diffusion checkpoint: its own first stage
        from skiptune.io.ldm import load_ldm_decoder

        return load_ldm_decoder(path, kind=kind, scale=scale, device=device, dtype=dtype)
    folder = _autoencoder_folder(path)
    config_path = folder / "config.json"
    config = _read_config(config_path)
    class_name = _resolve_kind(kind, config.get("_class_name"), config_path)
    names, safe = _weights_files(folder)
    try:
        diffusers = require_diffusers()
    except ImportError:
        raise CheckpointError(f"{folder} is a diffusers {class_name} folder; decoding latents with it needs the "
                              f"optional diffusers package: {INSTALL_HINT}") from None
    if not safe:
        _check_pickles(folder, names)
    files = {name: file_sha256(folder / name) for name in ["config.json", *names]}
    logging = diffusers.utils.logging
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # missing keys are an error below, not a warning about "newly initialized" weights
    try:
        model, info = getattr(diffusers, class_name).from_pretrained(
            str(folder), local_files_only=True, use_safetensors=safe, low_cpu_mem_usage=False, torch_dtype=dtype,
            output_loading_info=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        detail = "; ".join(lines[:3]) + (f"; ... ({len(lines) - 3} more)" if len(lines) > 3 else "") if lines \
            else str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{folder}: the weights do not fit the {class_name} that config.json describes: "
                              f"{detail}; use the config.json saved with these weights") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{folder}: diffusers could not load the {class_name}: {type(exc).__name__}: {exc}; "
                              f"{_FOLDER_HINT}") from None
    finally:
        logging.set_verbosity(verbosity)
    problems = []
    for what, keys in (("missing", info.get("missing_keys")), ("unexpected", info.get("unexpected_keys")),
                       ("mis-shaped", info.get("mismatched_keys"))):
        keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in keys or [])
        if keys:
            problems.append(f"{len(keys)} {what} tensors ({_summary(keys)})")
    if problems or info.get("error_msgs"):
        problems += [str(m) for m in info.get("error_msgs") or []][:1]
        raise CheckpointError(f"{folder}: the weights do not fit the {class_name} that config.json describes: "
                              f"{'; '.join(problems)}; use the config.json saved with these weights")
    model = model.to(device).eval().requires_grad_(False)
    if scale is None:
        scale = model.config.get("scaling_factor")
        if scale is None:
            raise CheckpointError(f"{config_path} has no scaling_factor; pass scale= (--vae-scale), the factor the "
                                  "model's latents were multiplied by")
    return LatentDecoder(model, kind=class_name, scale=scale, source=folder, files=files, device=device, dtype=dtype)


__all__ = ["KINDS", "LatentDecoder", "check_decoder_fits", "folder_sha256", "load_decoder"]
