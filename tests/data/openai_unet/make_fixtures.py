"""Make the openai UNet fixtures from the public code (see tests/data/README.md).

Run with the public packages importable (``guided_diffusion`` of openai/guided-diffusion and ``cm`` of
openai/consistency_models, plus ``einops``): ``python make_fixtures.py OUT_DIR openai``; for the latent
diffusion fixtures, ``ldm`` of CompVis/latent-diffusion and ``taming.modules.vqvae.quantize`` of
CompVis/taming-transformers: ``python make_fixtures.py OUT_DIR ldm``. Nothing of the public code is kept
here; this file only builds their networks, fills them with :func:`weights` and records their outputs.

The weights are not stored: :func:`weights` makes them from the parameter names and shapes with an
integer hash (splitmix64 of the running element index), so that any machine rebuilds them bit for bit
(every value is a multiple of 2^-23 times a power of two, exact in float32). A fixture stores the
public network's parameter names and shapes, the sha256 of those weights (:func:`state_sha256`), the
inputs and the public outputs; it is a few kilobytes.

The test imports :func:`weights` and :func:`state_sha256` from this file.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import types

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _uniform(offset: int, n: int, seed: int) -> np.ndarray:
    """n numbers in [-1, 1), multiples of 2^-23, from the hash of indices offset .. offset + n - 1."""
    z = np.arange(offset, offset + n, dtype=np.uint64) * _GOLDEN + np.uint64(seed)
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / 2.0**23 - 1.0


def weights(names_shapes: list[tuple[str, list[int]]], seed: int) -> dict[str, torch.Tensor]:
    """Float32 tensors for the given names and shapes: weights of fan-in f uniform in +-2^-ceil(log2 sqrt f),
    1-D ``weight``s (normalisation gains) 1 + u/8 and biases u/8 (u uniform in [-1, 1))."""
    out, offset = {}, 0
    for name, shape in names_shapes:
        n = math.prod(shape)
        u = _uniform(offset, n, seed).reshape(shape)
        offset += n
        if len(shape) > 1:
            fan_in = math.prod(shape[1:])
            value = u * 2.0 ** -math.ceil(math.log2(math.sqrt(fan_in)))
        elif name.endswith("weight"):
            value = 1 + u / 8
        else:
            value = u / 8
        out[name] = torch.from_numpy(value.astype(np.float32))
    return out


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name and its float32 little-endian bytes, in order."""
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes())
    return h.hexdigest()


# --- the fixtures ------------------------------------------------------------------------------------------------

BASE = dict(image_size=16, in_channels=3, model_channels=32, dropout=0.0, channel_mult=(1, 2, 2))
CONFIGS = {
    # guided-diffusion, the ImageNet-64 options at 16x16: learned sigma, scale-shift norm, resblock up/down,
    # 2 heads in the legacy order, attention at 8x8, 10 classes
    "gd-updown-legacy": ("guided_diffusion", dict(
        BASE, out_channels=6, num_res_blocks=1, attention_resolutions=(2,), num_classes=10, num_heads=2,
        use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=False)),
    # guided-diffusion with conv resampling, 16 channels per head in the new order, additive embedding,
    # unconditional, eps only
    "gd-conv-new": ("guided_diffusion", dict(
        BASE, out_channels=3, num_res_blocks=1, attention_resolutions=(2, 4), num_head_channels=16,
        use_scale_shift_norm=False, resblock_updown=False, use_new_attention_order=True)),
    # average-pool down / plain nearest up (conv_resample False), two blocks per level
    "gd-pool": ("guided_diffusion", dict(
        BASE, out_channels=3, num_res_blocks=2, attention_resolutions=(4,), num_classes=10, num_heads=1,
        conv_resample=False, use_scale_shift_norm=True, resblock_updown=False)),
    # consistency_models, the CD ImageNet-64 options at 16x16
    "cm-cd": ("cm", dict(
        BASE, out_channels=3, num_res_blocks=1, attention_resolutions=(2,), num_classes=10, num_head_channels=16,
        use_scale_shift_norm=True, resblock_updown=True)),
}
SEEDS = {"gd-updown-legacy": 1, "gd-conv-new": 2, "gd-pool": 3, "cm-cd": 4}


def _install_stubs() -> None:
    """consistency_models' attention always builds a ``flash_attn`` FlashAttention (CUDA only): a float32
    stand-in with the same interface (qkv [B, S, 3, H, D] -> ([B, S, H, D], None), scale 1/sqrt(D)).
    Its ``karras_diffusion`` imports piq, torchvision and its MPI helpers for training only: empty stand-ins."""
    flash = types.ModuleType("flash_attn")
    flash_attention = types.ModuleType("flash_attn.flash_attention")

    class FlashAttention(torch.nn.Module):
        def __init__(self, attention_dropout=0.0, **kwargs):
            super().__init__()

        def forward(self, qkv, key_padding_mask=None, need_weights=False, causal=False):
            q, k, v = (t.float().transpose(1, 2) for t in qkv.unbind(2))  # [B, H, S, D]
            w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            return (w @ v).transpose(1, 2).to(qkv.dtype), None

    flash_attention.FlashAttention = FlashAttention
    flash.flash_attention = flash_attention
    sys.modules.update({"flash_attn": flash, "flash_attn.flash_attention": flash_attention})
    for name, attrs in (("piq", {"LPIPS": None}), ("torchvision", {}), ("torchvision.transforms", {"RandomCrop": None}),
                        ("cm.dist_util", {"dev": lambda: torch.device("cpu")})):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod


def make(name: str) -> dict:
    package, cfg = CONFIGS[name]
    unet = __import__(f"{package}.unet", fromlist=["UNetModel"])
    model = unet.UNetModel(**cfg).eval()
    shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    state = weights(shapes, SEEDS[name])
    model.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(SEEDS[name])
    n = 3
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.tensor([0, 4, 9]) if cfg.get("num_classes") else None
    kwargs = {} if y is None else {"y": y}
    tensors = {"x": x}
    if y is not None:
        tensors["y"] = y
    with torch.no_grad():
        if package == "guided_diffusion":
            from guided_diffusion.script_util import create_gaussian_diffusion

            t = torch.tensor([0, 417, 999])
            tensors.update(t=t, out=model(x, t, **kwargs))
            for schedule in ("linear", "cosine"):
                diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=cfg["out_channels"] == 6,
                                                      noise_schedule=schedule)
                pred = diffusion.p_mean_variance(model, x, t, clip_denoised=False, model_kwargs=kwargs)
                tensors[f"x0_{schedule}"] = pred["pred_xstart"].float()
        else:
            from cm.karras_diffusion import KarrasDenoiser

            sigma = torch.tensor([0.002, 1.0, 80.0])
            t = 1000 * 0.25 * torch.log(sigma + 1e-44)
            tensors.update(t=t, sigma=sigma, out=model(x, t, **kwargs))
            for distillation in (True, False):
                denoiser = KarrasDenoiser(sigma_data=0.5, sigma_max=80.0, sigma_min=0.002, distillation=distillation,
                                          loss_norm="l2")
                tensors[f"denoised_{'cd' if distillation else 'edm'}"] = denoiser.denoise(model, x, sigma, **kwargs)[1]
    meta = {"name": name, "package": package, "config": json.dumps(cfg), "seed": str(SEEDS[name]),
            "keys": json.dumps(shapes), "weights_sha256": state_sha256(state), "torch": torch.__version__}
    return {"tensors": {k: v.contiguous() for k, v in tensors.items()}, "meta": meta}


# --- latent diffusion (CompVis/latent-diffusion) ------------------------------------------------------------------

_LOSS = {"target": "torch.nn.Identity"}
LDM_CONFIGS = {
    # the cin256-v2 options (configs/latent-diffusion/cin256-v2.yaml) at 8x8 latents: one head as wide as the
    # block, attention below the first level, 2 blocks per level, a class embedder with a null class (index 10),
    # a VQ first stage and LatentDiffusion's default scale_factor 1.0
    "ldm-cin-vq": dict(
        linear_start=0.0015, linear_end=0.0195, num_timesteps_cond=1, timesteps=1000, first_stage_key="image",
        cond_stage_key="class_label", image_size=8, channels=3, cond_stage_trainable=True,
        conditioning_key="crossattn", use_ema=False, monitor=None,
        unet_config={"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": dict(
            image_size=8, in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[2, 4],
            num_res_blocks=2, channel_mult=[1, 2, 2], num_heads=1, use_spatial_transformer=True,
            transformer_depth=1, context_dim=16)},
        first_stage_config={"target": "ldm.models.autoencoder.VQModelInterface", "params": dict(
            embed_dim=3, n_embed=16, lossconfig=_LOSS, ddconfig=dict(
                double_z=False, z_channels=3, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0))},
        cond_stage_config={"target": "ldm.modules.encoders.modules.ClassEmbedder", "params": dict(
            n_classes=11, embed_dim=16, key="class_label")}),
    # heads of 16 channels, 2 transformer blocks, scale-shift norm, resblock up/down, a KL first stage and a
    # stored scale_factor (scale_by_std registers it as a buffer)
    "ldm-kl": dict(
        linear_start=0.0015, linear_end=0.0195, num_timesteps_cond=1, timesteps=1000, first_stage_key="image",
        cond_stage_key="class_label", image_size=8, channels=4, cond_stage_trainable=True,
        conditioning_key="crossattn", use_ema=False, monitor=None, scale_factor=0.5, scale_by_std=True,
        unet_config={"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": dict(
            image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
            num_res_blocks=1, channel_mult=[1, 2], num_head_channels=16, use_spatial_transformer=True,
            transformer_depth=2, context_dim=24, use_scale_shift_norm=True, resblock_updown=True)},
        first_stage_config={"target": "ldm.models.autoencoder.AutoencoderKL", "params": dict(
            embed_dim=4, lossconfig=_LOSS, ddconfig=dict(
                double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0))},
        cond_stage_config={"target": "ldm.modules.encoders.modules.ClassEmbedder", "params": dict(
            n_classes=10, embed_dim=24, key="class_label")}),
}
LDM_SEEDS = {"ldm-cin-vq": 11, "ldm-kl": 12}
LDM_LABELS = {"ldm-cin-vq": [0, 4, 10], "ldm-kl": [0, 4, 9]}
# configs/latent-diffusion/cin256-v2.yaml: the full networks, for their parameter names and shapes only
CIN256_V2_UNET = dict(image_size=64, in_channels=3, out_channels=3, model_channels=192, attention_resolutions=[8, 4, 2],
                      num_res_blocks=2, channel_mult=[1, 2, 3, 5], num_heads=1, use_spatial_transformer=True,
                      transformer_depth=1, context_dim=512)
CIN256_V2_FIRST_STAGE = dict(embed_dim=3, n_embed=8192, lossconfig=_LOSS, ddconfig=dict(
    double_z=False, z_channels=3, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4],
    num_res_blocks=2, attn_resolutions=[], dropout=0.0))


def _install_ldm_stubs() -> None:
    """latent-diffusion imports pytorch_lightning (its models are LightningModules; plain modules suffice to build
    them and run their forward passes), torchvision's make_grid (logging only), omegaconf's ListConfig (a type
    check in UNetModel) and clip / kornia (text and image encoders not used here): stand-ins for all of them."""
    import torch.nn as nn

    stubs = {
        "pytorch_lightning": {"LightningModule": nn.Module},
        "pytorch_lightning.utilities": {},
        "pytorch_lightning.utilities.distributed": {"rank_zero_only": lambda f: f},
        "torchvision": {}, "torchvision.utils": {"make_grid": None},
        "omegaconf": {}, "omegaconf.listconfig": {"ListConfig": type("ListConfig", (list,), {})},
        "clip": {}, "kornia": {},
    }
    for name, attrs in stubs.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod


def _shapes_sha256(names_shapes: list[tuple[str, list[int]]]) -> str:
    return hashlib.sha256(json.dumps(names_shapes).encode()).hexdigest()


def make_ldm(name: str) -> dict:
    from ldm.models.diffusion.ddpm import LatentDiffusion

    cfg = LDM_CONFIGS[name]
    seed = LDM_SEEDS[name]
    model = LatentDiffusion(**json.loads(json.dumps(cfg))).eval()
    params = [(k, list(v.shape)) for k, v in model.named_parameters()]
    state = weights(params, seed)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k not in state for k in missing)  # only buffers are left as they were
    buffers = [(k, list(v.shape)) for k, v in model.state_dict().items() if k not in state]
    unet = model.model.diffusion_model
    params_of = cfg["unet_config"]["params"]
    g = torch.Generator().manual_seed(seed)
    n, c, res = 3, cfg["channels"], cfg["image_size"]
    x = torch.randn(n, c, res, res, generator=g)
    t = torch.tensor([0, 417, 999])
    labels = torch.tensor(LDM_LABELS[name])
    context3 = torch.randn(n, 3, params_of["context_dim"], generator=g)
    z = torch.randn(2, c, res, res, generator=g)
    with torch.no_grad():
        context = model.get_learned_conditioning({"class_label": labels})
        eps = model.apply_model(x, t, context)
        tensors = {"x": x, "t": t, "labels": labels, "context": context, "eps": eps,
                   "x0": model.predict_start_from_noise(x, t, eps),
                   "context3": context3, "out_context3": unet(x, t, context=context3),
                   "alphas_cumprod": model.alphas_cumprod, "z": z, "decoded": model.decode_first_stage(z)}
    meta = {"name": name, "package": "ldm", "config": json.dumps(cfg), "seed": str(seed), "keys": json.dumps(params),
            "buffers": json.dumps(buffers), "weights_sha256": state_sha256(state),
            "scale_factor": str(float(model.scale_factor)), "torch": torch.__version__}
    if name == "ldm-cin-vq":  # names and shapes of the full cin256-v2 networks (the UNet, the class embedder)
        from ldm.models.autoencoder import VQModelInterface
        from ldm.modules.diffusionmodules.openaimodel import UNetModel
        from ldm.modules.encoders.modules import ClassEmbedder

        unet_full = UNetModel(**CIN256_V2_UNET)
        full = [(f"model.diffusion_model.{k}", list(v.shape)) for k, v in unet_full.state_dict().items()]
        full += [(f"cond_stage_model.{k}", list(v.shape))
                 for k, v in ClassEmbedder(embed_dim=512, n_classes=1001, key="class_label").state_dict().items()]
        meta.update(cin256_v2_sha256=_shapes_sha256(full), cin256_v2_tensors=str(len(full)),
                    cin256_v2_parameters=str(sum(math.prod(s) for _, s in full)))
        first = VQModelInterface(**json.loads(json.dumps(CIN256_V2_FIRST_STAGE)))
        meta["cin256_v2_first_stage"] = json.dumps([(f"first_stage_model.{k}", list(v.shape))
                                                    for k, v in first.state_dict().items()])
    return {"tensors": {k: v.contiguous() for k, v in tensors.items()}, "meta": meta}


def main(out_dir: str, which: str = "openai") -> None:
    from pathlib import Path

    from safetensors.torch import save_file

    torch.set_num_threads(1)
    if which == "openai":
        _install_stubs()
        fixtures = {name: make(name) for name in CONFIGS}
    elif which == "ldm":
        _install_ldm_stubs()
        fixtures = {name: make_ldm(name) for name in LDM_CONFIGS}
    else:
        raise SystemExit(f"unknown fixture set {which!r}: openai or ldm")
    for name, fixture in fixtures.items():
        path = Path(out_dir) / f"{name}.safetensors"
        save_file(fixture["tensors"], str(path), metadata=fixture["meta"])
        print(path, path.stat().st_size)


if __name__ == "__main__":
    main(*sys.argv[1:3])
