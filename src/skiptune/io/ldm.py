"""CompVis latent-diffusion checkpoints (``.ckpt``): the denoiser and the first stage that decodes its latents.

A ``LatentDiffusion`` checkpoint (PyTorch Lightning's ``.ckpt``, e.g. cin256-v2's ``model.ckpt``) is a torch zip
whose ``state_dict`` holds

- ``model.diffusion_model.*``: the UNet (``openaimodel.UNetModel``), loaded into :class:`LDMPrecond`'s ``model``;
- ``cond_stage_model.*``: the conditioning; class-conditional models have a ``ClassEmbedder`` (``embedding.weight``,
  [classes (+ 1 null class), context width]), loaded into :class:`LDMPrecond`'s ``cond_stage_model``;
- ``first_stage_model.*``: the autoencoder (``VQModelInterface`` or ``AutoencoderKL``), converted for diffusers'
  ``VQModel`` / ``AutoencoderKL`` by :func:`load_ldm_decoder` (``--vae model.ckpt``);
- the schedule's buffers (``betas``, ``alphas_cumprod``, ...): ``alphas_cumprod`` is checked against the
  preset's schedule; ``scale_factor`` when the model was trained with ``scale_by_std``;
- ``model_ema.*`` when it was trained with ``use_ema`` (cin256-v2 was not): not loaded; the ``model.*`` weights are.

The file is read with ``torch.load(weights_only=True)`` only, so no code from it runs; a checkpoint that holds
other Python objects than tensors and plain containers is refused with the way to keep only its weights. The
network is the preset named by ``arch``, or the one LDM preset whose parameter names and shapes match the file.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import torch

from skiptune.core.errors import CheckpointError
from skiptune.io.openai_unet import match_preset
from skiptune.io.uvit import file_contents, load_strict
from skiptune.nets.openai_unet import LDMPrecond
from skiptune.nets.presets import PRESETS, build_preset, preset_config

UNET_PREFIX = "model.diffusion_model."
COND_PREFIX = "cond_stage_model."
FIRST_STAGE_PREFIX = "first_stage_model."
#: LatentDiffusion's scale_factor when the checkpoint does not store one (it is stored only with scale_by_std)
DEFAULT_SCALE_FACTOR = 1.0
_KEEP_WEIGHTS = ("in an environment where the checkpoint's own code (latent-diffusion) is installed, keep only its "
                 "weights: python -c \"import torch; ck = torch.load('model.ckpt', map_location='cpu', "
                 "weights_only=False); torch.save({'state_dict': ck['state_dict']}, 'model-weights.ckpt')\" and pass "
                 "model-weights.ckpt")


def is_ldm_state(state: dict) -> bool:
    """Whether a state dict has the keys of a latent-diffusion checkpoint (``model.diffusion_model.*``)."""
    return any(k.startswith(UNET_PREFIX) for k in state)


def read_ldm_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a latent-diffusion ``.ckpt``, read with ``torch.load(weights_only=True)``.

    A file that is no torch file, that torch's weights-only loader refuses, or that holds no
    ``model.diffusion_model.*`` tensors is a :class:`CheckpointError` naming the problem and the fix.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        what = file_contents(path)
        if what not in ("a ZIP archive", "a Python pickle"):
            raise CheckpointError(f"{path}: not a latent-diffusion checkpoint: it is {what}, not a .ckpt written by "
                                  "torch.save; pass the model's model.ckpt") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: torch's weights-only loader refused this checkpoint ({type(exc).__name__}: "
                              f"{first}): it is truncated (download it again), or it holds Python objects besides its "
                              "weights, whose loading would run code, which skiptune never does. For the latter, "
                              f"{_KEEP_WEIGHTS}") from None
    state = obj.get("state_dict") if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a checkpoint with a state_dict of tensors, got "
                              f"{type(state).__name__}; pass a latent-diffusion model.ckpt")
    if not is_ldm_state(state):
        from skiptune.io.uvit import guess_architecture

        guess = guess_architecture(state)
        raise CheckpointError(f"{path}: not a latent-diffusion checkpoint: no {UNET_PREFIX}* tensors"
                              + (f"; its keys look like {guess}" if guess else "")
                              + "; pass a CompVis latent-diffusion model.ckpt (or the file's own format)")
    return state


# --- the denoiser ---------------------------------------------------------------------------------------------


def ldm_presets() -> list[str]:
    return sorted(name for name, (cls, _) in PRESETS.items() if cls == "LDMPrecond")


def denoiser_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's UNet and conditioning tensors under :class:`LDMPrecond`'s names (``model.diffusion_model.X``
    -> ``model.X``, ``cond_stage_model.*`` kept)."""
    out = {f"model.{k[len(UNET_PREFIX):]}": v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    out.update({k: v for k, v in state.items() if k.startswith(COND_PREFIX)})
    return out


def _preset_shapes(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_preset(name).state_dict().items()}


def _fix() -> str:
    return (f"pass the preset of the file's configuration as arch (--arch): one of {', '.join(ldm_presets())}, or add "
            "a preset with its configuration (its yaml's unet_config) to skiptune.nets.presets")


def infer_ldm_preset(state: dict[str, torch.Tensor], path: str | os.PathLike = "checkpoint") -> str:
    """The single LDM preset whose denoiser has exactly the names and shapes of the checkpoint's UNet and
    conditioning."""
    shapes = {k: tuple(v.shape) for k, v in denoiser_state(state).items()}
    width = shapes.get("model.input_blocks.0.0.weight", (0,))[0]
    return match_preset(shapes, ldm_presets(), _preset_shapes, path,
                        f"a latent-diffusion UNet (model_channels {width}, {len(shapes)} tensors)", _fix())


def _check_conditioning(state: dict[str, torch.Tensor], path: Path) -> None:
    cond = sorted(k[len(COND_PREFIX):] for k in state if k.startswith(COND_PREFIX))
    if cond and cond != ["embedding.weight"]:
        shown = ", ".join(cond[:3]) + (f", ... ({len(cond) - 3} more)" if len(cond) > 3 else "")
        raise CheckpointError(f"{path}: its cond_stage_model is not a class embedder ({len(cond)} tensors: {shown}; a "
                              "text or image encoder?); skiptune loads class-conditional (ClassEmbedder) and "
                              "unconditional latent-diffusion models")


def _check_schedule(net: LDMPrecond, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """The checkpoint's ``alphas_cumprod`` buffer (float32) against the preset's schedule."""
    stored = state.get("alphas_cumprod")
    if stored is None:
        return
    ours = net.alphas_cumprod.to(torch.float32)
    if stored.shape != ours.shape or not torch.allclose(stored.to(torch.float32), ours, rtol=1e-6, atol=0):
        raise CheckpointError(f"{path}: the checkpoint's noise schedule (alphas_cumprod, {stored.shape[0]} levels) is "
                              f"not the one of preset {arch} ({net.schedule}, {net.num_timesteps} levels); {_fix()}")


def load_ldm(path: str | os.PathLike, arch: str | None = None,
             state: dict[str, torch.Tensor] | None = None) -> LDMPrecond:
    """A latent-diffusion checkpoint as the :class:`LDMPrecond` of preset ``arch`` (inferred from the shapes when
    None). Its first stage is not part of the denoiser: :func:`load_ldm_decoder` turns it into a decoder."""
    path = Path(path)
    if state is None:
        state = read_ldm_checkpoint(path)
    if not is_ldm_state(state):
        raise CheckpointError(f"{path}: not a latent-diffusion checkpoint (no {UNET_PREFIX}* tensors)")
    _check_conditioning(state, path)
    if arch is None:
        arch = infer_ldm_preset(state, path)
    elif preset_config(arch)[0] != "LDMPrecond":
        raise CheckpointError(f"{path} is a latent-diffusion checkpoint but preset {arch} is not a latent-diffusion "
                              f"model; use one of {', '.join(ldm_presets())}")
    net = build_preset(arch)
    try:
        load_strict(net, denoiser_state(state), path, f"preset {arch}")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {_fix()}") from None
    _check_schedule(net, state, path, arch)
    return net.eval()


# --- the first stage ------------------------------------------------------------------------------------------


def first_stage_config(state: dict[str, torch.Tensor], path: str | os.PathLike = "checkpoint") -> tuple[str, dict]:
    """``(diffusers class name, config)`` of the checkpoint's first stage, read from its tensor shapes:
    ``VQModel`` when it has a codebook (``quantize.embedding.weight``), else ``AutoencoderKL``."""
    fs = {k[len(FIRST_STAGE_PREFIX):]: tuple(v.shape) for k, v in state.items() if k.startswith(FIRST_STAGE_PREFIX)}
    need = ("encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.conv_out.weight", "post_quant_conv.weight")
    missing = [k for k in need if k not in fs]
    if missing:
        raise CheckpointError(f"{path}: no first stage to decode with (no {FIRST_STAGE_PREFIX}{missing[0]}); pass the "
                              "autoencoder the model was trained with as a diffusers folder (--vae DIR)")
    attn = sorted({m.group(0) for k in fs if (m := re.match(r"(encoder\.down|decoder\.up)\.\d+\.attn", k))})
    if attn:
        raise CheckpointError(f"{path}: its first stage has attention inside its resolution levels ({attn[0]}, ...: "
                              "ddconfig attn_resolutions), which diffusers' conversion of LDM autoencoders does not "
                              "map; convert it to a diffusers folder yourself and pass that (--vae DIR)")
    levels = sorted({int(m.group(1)) for k in fs if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    blocks = {int(m.group(1)) for k in fs if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    widths = [fs[f"encoder.down.{i}.block.0.conv2.weight"][0] for i in levels]
    z_channels = fs["decoder.conv_in.weight"][1]
    config = dict(in_channels=fs["encoder.conv_in.weight"][1], out_channels=fs["decoder.conv_out.weight"][0],
                  down_block_types=["DownEncoderBlock2D"] * len(levels),
                  up_block_types=["UpDecoderBlock2D"] * len(levels), block_out_channels=widths,
                  layers_per_block=len(blocks), latent_channels=z_channels, norm_num_groups=32)
    if "quantize.embedding.weight" in fs:
        n_embed, embed_dim = fs["quantize.embedding.weight"]
        return "VQModel", {**config, "num_vq_embeddings": n_embed, "vq_embed_dim": embed_dim}
    embed_dim = fs["post_quant_conv.weight"][1]
    if embed_dim != z_channels:
        raise CheckpointError(f"{path}: its KL first stage has embed_dim {embed_dim} != z_channels {z_channels}, which "
                              "diffusers' AutoencoderKL cannot express; convert it yourself, pass the folder (--vae)")
    return "AutoencoderKL", config


def convert_first_stage(state: dict[str, torch.Tensor], path: str | os.PathLike = "checkpoint") \
        -> tuple[str, dict, dict[str, torch.Tensor]]:
    """``(class name, config, diffusers state dict)`` of the checkpoint's first stage, converted by diffusers' own
    ``convert_ldm_vae_checkpoint`` (encoder, decoder, quant convolutions); a VQ codebook keeps its name
    (``quantize.embedding.weight``), which diffusers' ``VQModel`` shares with LDM's quantizer."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    kind, config = first_stage_config(state, path)
    first = {k: v for k, v in state.items() if k.startswith(FIRST_STAGE_PREFIX)}
    converted = convert_ldm_vae_checkpoint(first, config)
    if kind == "VQModel":
        converted["quantize.embedding.weight"] = first[f"{FIRST_STAGE_PREFIX}quantize.embedding.weight"]
    return kind, config, converted


def load_ldm_decoder(path: str | os.PathLike, *, kind: str = "auto", scale: float | None = None,
                     device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32):
    """The first stage of a latent-diffusion checkpoint as a :class:`~skiptune.io.vae.LatentDecoder` (diffusers
    ``VQModel`` or ``AutoencoderKL``), which decodes the model's latents as ``decode(z / scale)``, as
    ``LatentDiffusion.decode_first_stage`` does (a VQ first stage quantizes ``z / scale`` first, as there).

    ``scale``: None takes the checkpoint's ``scale_factor`` when it stores one, else LatentDiffusion's default 1.0
    (cin256-v2's; a model whose yaml sets another ``scale_factor`` without ``scale_by_std`` needs it given:
    ``--vae-scale``). The decoder's ``sha256`` is the checkpoint file's.
    """
    from skiptune.adapters.diffusers import INSTALL_HINT, require_diffusers
    from skiptune.core.checksums import file_sha256
    from skiptune.io.vae import LatentDecoder, _check_scale, _device, _dtype, _resolve_kind

    path = Path(path)
    device, dtype = _device(device), _dtype(dtype)
    state = read_ldm_checkpoint(path)
    try:
        diffusers = require_diffusers()
    except ImportError:
        raise CheckpointError(f"{path}: decoding a latent-diffusion model's latents with its first stage needs the "
                              f"optional diffusers package: {INSTALL_HINT}") from None
    class_name, config, converted = convert_first_stage(state, path)
    class_name = _resolve_kind(kind, class_name, path)
    if scale is None:
        stored = state.get("scale_factor")
        scale = float(stored) if stored is not None else DEFAULT_SCALE_FACTOR
    scale = _check_scale(scale, str(path))
    with torch.device("meta"):
        model = getattr(diffusers, class_name)(**config, scaling_factor=scale)
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted]
    misshaped = [k for k in expected if k in converted and tuple(converted[k].shape) != tuple(expected[k].shape)]
    if missing or misshaped:
        keys = missing or misshaped
        raise CheckpointError(f"{path}: its first stage does not convert to a diffusers {class_name} ({len(missing)} "
                              f"missing, {len(misshaped)} mis-shaped tensors: {', '.join(keys[:3])}); convert it "
                              "yourself and pass the folder (--vae DIR)")
    model.load_state_dict({k: converted[k] for k in expected}, strict=True, assign=True)
    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()  # no advice about from_pretrained's torch_dtype: there is no folder
    try:
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)
    return LatentDecoder(model, kind=class_name, scale=scale, source=path, files={path.name: file_sha256(path)},
                         device=device, dtype=dtype)


__all__ = ["DEFAULT_SCALE_FACTOR", "convert_first_stage", "denoiser_state", "first_stage_config",
           "infer_ldm_preset", "is_ldm_state", "ldm_presets", "load_ldm", "load_ldm_decoder", "read_ldm_checkpoint"]
