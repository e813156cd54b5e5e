"""Named network configurations: the EDM paper's models and tiny look-alikes for tests.

Each preset is ``(precond class name, constructor kwargs)``. The full presets match the training
configurations of the public EDM checkpoints (README of NVlabs/edm), of the public U-ViT
ImageNet-256 models (configs/imagenet256_uvit_{large,huge}.py of baofff/U-ViT), of the OpenAI
ImageNet-64 UNets (README of openai/guided-diffusion, scripts/launch.sh of openai/consistency_models) and of
CompVis latent-diffusion's class-conditional ImageNet model (configs/latent-diffusion/cin256-v2.yaml); each ``-tiny``
variant keeps the topology (levels, blocks per level, attention placement, skip count) with few
channels and a small resolution, so that tests exercise exactly the same site structure.

A preset built without weights is initialised from a fixed seed derived from its name
(:func:`preset_seed`), so every load of ``adm-tiny`` gives the same network, without touching the
global torch random state.
"""

from __future__ import annotations

import copy
import hashlib

import torch
from torch import nn

from skiptune.core.errors import InputError
from skiptune.nets.openai_unet import OPENAI_PRECOND_CLASSES
from skiptune.nets.precond import PRECOND_CLASSES
from skiptune.nets.uvit import UViTPrecond

#: every class a preset or a skiptune checkpoint may name
NETWORK_CLASSES: dict[str, type[nn.Module]] = {**PRECOND_CLASSES, "UViTPrecond": UViTPrecond}
NETWORK_CLASSES.update(OPENAI_PRECOND_CLASSES)

_DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
               decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1])
_NCSNPP = dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual",
               decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1])
_ADM = dict(model_type="DhariwalUNet")
# The OpenAI UNet at ImageNet 64x64, class-conditional (--num_channels 192 --num_res_blocks 3 --num_head_channels 64
# --attention_resolutions 32,16,8 --resblock_updown True --use_scale_shift_norm True --use_fp16 True);
# attention_resolutions are the public downsampling rates 64 // (32, 16, 8).
_OPENAI_IMAGENET64 = dict(img_resolution=64, img_channels=3, label_dim=1000, model_channels=192,
                          channel_mult=[1, 2, 3, 4], num_res_blocks=3, attention_resolutions=[2, 4, 8],
                          num_head_channels=64, resblock_updown=True, use_scale_shift_norm=True, use_fp16=True)
# CompVis latent-diffusion cin256-v2 (configs/latent-diffusion/cin256-v2.yaml; the model.ckpt of the README's ImageNet
# notebook): 64x64x3 latents of a VQ-f4 first stage, LatentDiffusion's default scale_factor 1.0, 1000 betas
# linspace(sqrt(0.0015), sqrt(0.0195))^2, a class embedder of 1001 rows of width 512 (row 1000: the null class of its
# classifier-free guidance) as the transformers' context; num_heads 1 (one head as wide as the block), no
# num_head_channels; attention_resolutions are downsampling rates, as in the public config.
_LDM_CIN256_V2 = dict(img_resolution=64, img_channels=3, label_dim=1000, null_label=True, latent_scale_factor=1.0,
                      schedule="scaled_linear", linear_start=0.0015, linear_end=0.0195, num_timesteps=1000,
                      model_channels=192, attention_resolutions=[8, 4, 2], num_res_blocks=2, channel_mult=[1, 2, 3, 5],
                      num_heads=1, use_spatial_transformer=True, transformer_depth=1, context_dim=512)
_UVIT_IMAGENET256 = dict(img_resolution=32, img_channels=4, label_dim=1000, null_label=True,
                         latent_scale_factor=0.18215, patch_size=2, num_heads=16, mlp_ratio=4, qkv_bias=False,
                         mlp_time_embed=False)

PRESETS: dict[str, tuple[str, dict]] = {
    # CIFAR-10 32x32 (EDM: --arch=ddpmpp / ncsnpp, augment 0.12 -> augment_dim 9, dropout 0.13).
    "ddpmpp-cifar10": ("EDMPrecond", dict(img_resolution=32, img_channels=3, label_dim=0, **_DDPMPP,
                                          model_channels=128, channel_mult=[2, 2, 2], augment_dim=9,
                                          dropout=0.13)),
    "ddpmpp-cifar10-cond": ("EDMPrecond", dict(img_resolution=32, img_channels=3, label_dim=10, **_DDPMPP,
                                               model_channels=128, channel_mult=[2, 2, 2], augment_dim=9,
                                               dropout=0.13)),
    "ncsnpp-cifar10": ("EDMPrecond", dict(img_resolution=32, img_channels=3, label_dim=0, **_NCSNPP,
                                          model_channels=128, channel_mult=[2, 2, 2], augment_dim=9,
                                          dropout=0.13)),
    # AFHQv2 64x64 (--cres=1,2,2,2 --dropout=0.25 --augment=0.15).
    "ddpmpp-afhqv2-64": ("EDMPrecond", dict(img_resolution=64, img_channels=3, label_dim=0, **_DDPMPP,
                                            model_channels=128, channel_mult=[1, 2, 2, 2], augment_dim=9,
                                            dropout=0.25)),
    # ImageNet 64x64, class-conditional ADM (--arch=adm --dropout=0.10 --augment=0).
    "adm-imagenet64": ("EDMPrecond", dict(img_resolution=64, img_channels=3, label_dim=1000, **_ADM,
                                          model_channels=192, channel_mult=[1, 2, 3, 4], dropout=0.10)),
    # ImageNet 256x256 U-ViT on Stable Diffusion VAE latents (4x32x32, scale 0.18215), class-conditional
    # with a null class for guidance (num_classes=1001). U-ViT-L/2 was trained on the continuous VP SDE
    # (train_ldm.py, sampled from t = 1e-4), U-ViT-H/2 on SD's 1000 discrete betas (train_ldm_discrete.py).
    "uvit-imagenet256-large": ("UViTPrecond", dict(**_UVIT_IMAGENET256, embed_dim=1024, depth=20, conv=True,
                                                   schedule="vp", epsilon_t=1e-4)),
    "uvit-imagenet256-huge": ("UViTPrecond", dict(**_UVIT_IMAGENET256, embed_dim=1152, depth=28, conv=False,
                                                  schedule="sd-discrete")),
    # guided-diffusion's ImageNet-64 model (README of openai/guided-diffusion, 64x64_diffusion.pt): --learn_sigma
    # True --noise_schedule cosine --diffusion_steps 1000 --dropout 0.1 --use_new_attention_order True.
    "adm-guided-imagenet64": ("ADMPrecond", dict(**_OPENAI_IMAGENET64, schedule="cosine", num_timesteps=1000,
                                                 learn_sigma=True, prediction="eps", dropout=0.1,
                                                 use_new_attention_order=True)),
    # consistency_models' CD ImageNet-64 models (scripts/launch.sh, cd_imagenet64_{l2,lpips}.pt): the same
    # UNet without learned sigma, dropout 0.0, sigma in [0.002, 80]. Their attention always splits q, k, v
    # before the heads (the new order) with 2-D 1x1 convolutions.
    "cd-imagenet64": ("CMPrecond", dict(**_OPENAI_IMAGENET64, distillation=True, sigma_min=0.002, sigma_max=80.0,
                                        sigma_data=0.5, dropout=0.0, use_new_attention_order=True,
                                        attention_conv_dims=2)),
    "ldm-imagenet256": ("LDMPrecond", _LDM_CIN256_V2),
}

_TINY = {
    "ddpmpp-cifar10": dict(img_resolution=16, model_channels=16, augment_dim=0, attn_resolutions=[8]),
    "ddpmpp-cifar10-cond": dict(img_resolution=16, model_channels=16, augment_dim=0, attn_resolutions=[8]),
    "ncsnpp-cifar10": dict(img_resolution=16, model_channels=16, augment_dim=0, attn_resolutions=[8]),
    "ddpmpp-afhqv2-64": dict(img_resolution=16, model_channels=8, augment_dim=0, attn_resolutions=[4]),
    "adm-imagenet64": dict(img_resolution=16, model_channels=8, label_dim=10, channels_per_head=8,
                           attn_resolutions=[8, 4, 2]),
    "uvit-imagenet256-large": dict(img_resolution=8, label_dim=10, embed_dim=32, num_heads=4),
    "uvit-imagenet256-huge": dict(img_resolution=8, label_dim=10, embed_dim=32, num_heads=4),
    # 32 channels at every level (the widths are multiples of the 32 normalisation groups), attention at 8, 4, 2
    "adm-guided-imagenet64": dict(img_resolution=16, label_dim=10, model_channels=32, channel_mult=[1, 1, 1, 1],
                                  num_head_channels=16),
    "cd-imagenet64": dict(img_resolution=16, label_dim=10, model_channels=32, channel_mult=[1, 1, 1, 1],
                          num_head_channels=16),
    "ldm-imagenet256": dict(img_resolution=16, label_dim=10, model_channels=32, channel_mult=[1, 1, 1, 1],
                            context_dim=16),
}
for _name, _over in _TINY.items():
    _cls, _kw = PRESETS[_name]
    PRESETS[f"{_name}-tiny"] = (_cls, {**_kw, **_over})
# Short aliases for the tiny variants.
ALIASES = {"ddpmpp-tiny": "ddpmpp-cifar10-tiny", "ncsnpp-tiny": "ncsnpp-cifar10-tiny",
           "adm-tiny": "adm-imagenet64-tiny", "uvit-tiny": "uvit-imagenet256-large-tiny",
           "ldm-cin256-v2": "ldm-imagenet256"}


def preset_names() -> list[str]:
    return sorted([*PRESETS, *ALIASES])


def preset_config(name: str) -> tuple[str, dict]:
    """``(precond class name, kwargs)`` of a preset; ValueError naming the known presets otherwise."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        raise InputError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    cls, kwargs = PRESETS[key]
    return cls, copy.deepcopy(kwargs)


def preset_seed(name: str) -> int:
    """The seed that initialises a preset's random weights: the first 4 bytes of
    ``sha256("skiptune-preset:" + canonical name)`` as an integer (an alias and its full name share it)."""
    preset_config(name)  # unknown names fail here
    key = ALIASES.get(name, name)
    return int.from_bytes(hashlib.sha256(f"skiptune-preset:{key}".encode()).digest()[:4], "big")


def build_preset(name: str, *, seed: int | None = None) -> nn.Module:
    """A randomly initialised network of the named preset (in eval mode).

    The weights are drawn from a CPU generator seeded with ``seed`` (default :func:`preset_seed`, fixed
    per preset), so two builds are equal; the global torch random state is left as it was.
    """
    cls, kwargs = preset_config(name)
    seed = preset_seed(name) if seed is None else int(seed)
    with torch.random.fork_rng(devices=[]):  # restores the CPU generator; CUDA generators are never touched
        torch.default_generator.manual_seed(seed)
        return build_network(cls, kwargs)


def build_network(class_name: str, kwargs: dict) -> nn.Module:
    """Construct one of our preconditioned networks from its class name and kwargs."""
    if class_name not in NETWORK_CLASSES:
        raise InputError(f"unknown network class {class_name!r}; known: {sorted(NETWORK_CLASSES)}")
    net = NETWORK_CLASSES[class_name](**copy.deepcopy(kwargs)).eval()
    net.skiptune_config = {"class_name": class_name, "kwargs": copy.deepcopy(kwargs)}
    return net
