"""Networks: topology, site tables and parameter counts of the presets, EDM naming."""

import math

import pytest
import torch

from skiptune.nets import PRESETS, build_network, build_preset, preset_config
from skiptune.skip import skip_sites

FULL = ["ddpmpp-cifar10", "ddpmpp-cifar10-cond", "ncsnpp-cifar10", "ddpmpp-afhqv2-64", "adm-imagenet64"]


def expected_sites(kwargs):
    """Every encoder module output is a skip: a stem conv, then per level (down block +) blocks."""
    levels = len(kwargs.get("channel_mult", [1, 2, 2, 2]))
    blocks = kwargs.get("num_blocks", 3 if kwargs["model_type"] == "DhariwalUNet" else 4)
    return levels * (blocks + 1)


def expected_site_channels(kwargs):
    """(main, skip) channels per join, innermost first, derived from the UNet's channel recipe."""
    mc, mult = kwargs["model_channels"], kwargs["channel_mult"]
    blocks = kwargs.get("num_blocks", 3 if kwargs["model_type"] == "DhariwalUNet" else 4)
    stem = mc * mult[0] if kwargs["model_type"] == "DhariwalUNet" else mc
    enc = [stem]
    c = stem
    for level, m in enumerate(mult):
        if level > 0:
            enc.append(c)  # down block keeps width
        for _ in range(blocks):
            c = mc * m
            enc.append(c)
    joins = []
    for level in reversed(range(len(mult))):
        for _ in range(blocks + 1):
            skip = enc.pop()
            joins.append((c, skip))
            c = mc * mult[level]
    return joins


@pytest.mark.parametrize("name", FULL + [f"{n}-tiny" for n in FULL])
def test_site_table_matches_channel_recipe(name):
    cls, kwargs = preset_config(name)
    with torch.device("meta"):
        net = build_network(cls, kwargs)
    sites = skip_sites(net)
    assert len(sites) == expected_sites(kwargs)
    assert [(s.main_channels, s.skip_channels) for s in sites] == expected_site_channels(kwargs)
    assert [s.index for s in sites] == list(range(len(sites)))
    res = [s.resolution for s in sites]
    assert res == sorted(res), "sites must run innermost (lowest resolution) to outermost"
    assert res[0] == kwargs["img_resolution"] >> (len(kwargs["channel_mult"]) - 1)
    assert res[-1] == kwargs["img_resolution"]


def test_adm_imagenet64_has_16_sites_and_published_size():
    cls, kwargs = preset_config("adm-imagenet64")
    with torch.device("meta"):
        net = build_network(cls, kwargs)
    assert len(skip_sites(net)) == 16
    # EDM paper, Table 7 / README: ADM ImageNet-64 has 296M parameters, DDPM++/NCSN++ CIFAR-10 56M.
    assert round(sum(p.numel() for p in net.parameters()) / 1e6) == 296
    for name in ("ddpmpp-cifar10", "ncsnpp-cifar10"):
        cls, kwargs = preset_config(name)
        with torch.device("meta"):
            n = build_network(cls, kwargs)
        assert round(sum(p.numel() for p in n.parameters()) / 1e6) == 56


def test_tiny_variants_keep_the_topology():
    for name in FULL:
        full_cls, full = preset_config(name)
        tiny_cls, tiny = preset_config(f"{name}-tiny")
        assert full_cls == tiny_cls
        for key in ("model_type", "channel_mult", "embedding_type", "encoder_type", "decoder_type",
                    "resample_filter", "num_blocks"):
            assert full.get(key) == tiny.get(key), (name, key)
        # attention sits at the same level (counted from the top) in both
        levels = len(full["channel_mult"])
        default_attn = [32, 16, 8] if full["model_type"] == "DhariwalUNet" else [16]
        def attn_levels(kw, default=default_attn):
            return sorted(int(math.log2(kw["img_resolution"] // r))
                          for r in kw.get("attn_resolutions", default) if r <= kw["img_resolution"])
        assert attn_levels(full) == attn_levels(tiny) and max(attn_levels(full)) < levels


EDM_KEYS = {
    "adm-imagenet64": ["model.map_noise", "model.map_layer0.weight", "model.map_label.weight",
                       "model.enc.64x64_conv.weight", "model.enc.32x32_down.conv0.weight",
                       "model.enc.8x8_block2.qkv.weight", "model.dec.8x8_in0.norm2.weight",
                       "model.dec.64x64_block3.skip.weight", "model.out_norm.weight", "model.out_conv.bias",
                       "model.enc.32x32_down.skip.resample_filter"],
    "ddpmpp-cifar10": ["model.map_augment.weight", "model.enc.32x32_conv.weight", "model.enc.16x16_down.skip.weight",
                       "model.dec.32x32_aux_norm.weight", "model.dec.32x32_aux_conv.weight",
                       "model.dec.16x16_block4.qkv.weight", "model.dec.16x16_up.conv0.resample_filter"],
    "ncsnpp-cifar10": ["model.map_noise.freqs", "model.enc.16x16_aux_residual.weight"],
}


@pytest.mark.parametrize("name", sorted(EDM_KEYS))
def test_edm_parameter_names(name):
    cls, kwargs = preset_config(name)
    with torch.device("meta"):
        keys = set(build_network(cls, kwargs).state_dict())
    for k in EDM_KEYS[name]:
        if k == "model.map_noise":  # positional embedding: no tensors
            assert not any(x.startswith("model.map_noise.") for x in keys)
        else:
            assert k in keys, k
    assert not any(".joins." in k for k in keys), "skip joins must not add checkpoint entries"


def test_state_dict_round_trip_is_strict_and_exact():
    a = build_preset("ncsnpp-tiny")
    b = build_preset("ncsnpp-tiny")
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    s = torch.tensor([0.5, 5.0])
    assert torch.equal(a(x, s), b(x, s))
    bad = {k.replace("map_layer0", "map_layerX"): v for k, v in a.state_dict().items()}
    with pytest.raises(RuntimeError):
        b.load_state_dict(bad, strict=True)


def test_class_conditional_and_preconditioners_run():
    for name in ("adm-tiny", "ddpmpp-cifar10-cond-tiny"):
        net = build_preset(name)
        label_dim = net.label_dim
        y = net(torch.randn(3, 3, 16, 16), torch.tensor([0.1, 1.0, 10.0]), torch.eye(label_dim)[:3])
        assert y.shape == (3, 3, 16, 16) and torch.isfinite(y).all()
    _, kw = preset_config("ddpmpp-tiny")
    for cls in ("VPPrecond", "VEPrecond"):
        net = build_network(cls, kw)
        assert torch.isfinite(net(torch.randn(1, 3, 16, 16), torch.tensor([2.0]))).all()


def test_edm_precond_coefficients_closed_form():
    """With F = 0 the EDM denoiser is c_skip x = sigma_d^2 / (sigma^2 + sigma_d^2) x."""
    net = build_preset("ddpmpp-tiny")
    with torch.no_grad():
        for p in net.model.dec.parameters():
            p.zero_()
    x = torch.randn(2, 3, 16, 16)
    sigma = torch.tensor([0.3, 3.0])
    expect = x * (0.25 / (sigma**2 + 0.25)).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(net(x, sigma), expect)


def test_all_presets_listed():
    assert {"ddpmpp-cifar10", "adm-imagenet64", "ddpmpp-afhqv2-64"} <= set(PRESETS)
    with pytest.raises(ValueError, match="known presets"):
        build_preset("no-such-net")


def test_presets_are_seeded_by_name_without_touching_the_global_rng():
    from skiptune.nets.presets import ALIASES, preset_seed

    torch.manual_seed(0)
    state = torch.get_rng_state()
    a, b = build_preset("ddpmpp-tiny"), build_preset("ddpmpp-cifar10-tiny")
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    seeds = {name: preset_seed(name) for name in PRESETS}
    assert len(set(seeds.values())) == len(seeds)  # every preset its own seed
    assert all(preset_seed(alias) == seeds[full] for alias, full in ALIASES.items())
    assert all(0 <= s < 2**32 for s in seeds.values())
    assert preset_seed("ddpmpp-tiny") == int.from_bytes(
        __import__("hashlib").sha256(b"skiptune-preset:ddpmpp-cifar10-tiny").digest()[:4], "big")
    with pytest.raises(ValueError, match="known presets"):
        preset_seed("no-such-net")
    # an explicit seed draws the same weights as seeding the global generator by hand would
    torch.manual_seed(5)
    by_hand = build_network(*preset_config("ddpmpp-tiny"))
    seeded = build_preset("ddpmpp-tiny", seed=5)
    assert all(torch.equal(x, y) for x, y in zip(by_hand.state_dict().values(), seeded.state_dict().values(),
                                                 strict=True))
