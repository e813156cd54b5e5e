"""The OpenAI UNet family (guided-diffusion, consistency_models): public naming and outputs, the denoisers,
Skip-Tuning sites and modes, loading public state dicts."""

import json
import math

import pytest
import torch

from conftest import randomize
from openai_fixtures import load_fixture, time_features
from skiptune.cli.info import describe
from skiptune.experiment import SamplingSpec, generate
from skiptune.io import CheckpointError, load_checkpoint, load_model, open_model, save_checkpoint
from skiptune.nets import ADMPrecond, CMPrecond, build_preset
from skiptune.nets.openai_unet import OpenAIUNet, ResBlock
from skiptune.skip import Sites, skip_sites, skip_tuning

FIXTURES = ["gd-updown-legacy", "gd-conv-new", "gd-pool", "cm-cd"]
pytestmark = pytest.mark.usefixtures("one_thread")


def read_fixture(name):
    """(public UNetModel kwargs, our extra kwargs, [(name, shape)], weights, tensors) of a fixture."""
    meta, tensors, keys, state = load_fixture(name)
    cfg = json.loads(meta["config"])
    # consistency_models: q, k, v split before the heads, with 2-D 1x1 convolutions
    extra = dict(use_new_attention_order=True, attention_conv_dims=2) if meta["package"] == "cm" else {}
    return cfg, extra, keys, state, tensors


# --- equality with the public code --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_public_state_dicts_load_strictly_and_outputs_match(name):
    cfg, extra, keys, state, t = read_fixture(name)
    model = OpenAIUNet(**cfg, **extra).eval()
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == keys  # names, shapes and order
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(t["x"], t["t"], t.get("y"))
        if "y" in t:  # one-hot rows give the embedding of the integer labels exactly
            assert torch.equal(model(t["x"], t["t"], torch.eye(cfg["num_classes"])[t["y"]]), out)
    # measured: 0.0 for all four (torch 2.13 CPU; the math attention scales q and k by 1/sqrt(sqrt(c)) as they do)
    assert (out - t["out"]).abs().max() <= 1e-6


def _adm_from_fixture(cfg, extra, state, schedule):
    kw = {k: v for k, v in cfg.items() if k not in ("image_size", "in_channels", "out_channels", "num_classes")}
    net = ADMPrecond(img_resolution=cfg["image_size"], img_channels=cfg["in_channels"],
                     label_dim=cfg.get("num_classes") or 0, schedule=schedule, learn_sigma=cfg["out_channels"] == 6,
                     **kw, **extra).eval()
    net.model.load_state_dict(state, strict=True)
    return net


@pytest.mark.parametrize("name", ["gd-updown-legacy", "gd-conv-new"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_adm_denoiser_matches_guided_diffusion_pred_xstart(name, schedule):
    cfg, extra, _, state, t = read_fixture(name)
    net = _adm_from_fixture(cfg, extra, state, schedule)
    sigma = net.sigmas[t["t"]]  # the trained levels of the fixture's timesteps 0, 417, 999
    assert torch.equal(net.timestep(sigma.float()), t["t"])
    x = t["x"] * (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt()  # x_t = x / sqrt(1 + sigma^2)
    with torch.no_grad():
        d = net(x.float(), sigma.float(), t.get("y"))
    err = ((d - t[f"x0_{schedule}"]).abs().amax(dim=(1, 2, 3)) / (1 + sigma)).max()
    # measured: <= 7.7e-7 of (1 + sigma) (sigma up to 157 linear, 2.0e4 cosine): float32 rounding of x - sigma eps
    assert err <= 2e-6


@pytest.mark.parametrize("distillation", [True, False])
def test_cm_denoiser_matches_karras_denoiser(distillation):
    cfg, extra, _, state, t = read_fixture("cm-cd")
    kw = {k: v for k, v in cfg.items() if k not in ("image_size", "in_channels", "out_channels", "num_classes")}
    net = CMPrecond(img_resolution=16, img_channels=3, label_dim=10, distillation=distillation, **kw, **extra).eval()
    net.model.load_state_dict(state, strict=True)
    assert torch.equal(net.coefficients(t["sigma"])[3], t["t"])  # c_noise = 250 ln(sigma + 1e-44)
    with torch.no_grad():
        d = net(t["x"], t["sigma"], t["y"])
    ref = t["denoised_cd" if distillation else "denoised_edm"]
    assert (d - ref).abs().max() <= 1e-5  # measured: 0.0
    if distillation:
        assert torch.equal(d[0], t["x"][0])  # the boundary condition D(x, sigma_min) = x


def test_schedules_and_parameterizations():
    net = build_preset("adm-guided-imagenet64-tiny")
    s = 0.008
    f = [math.cos((i / 1000 + s) / (1 + s) * math.pi / 2) ** 2 for i in range(1001)]
    abar, prod = [], 1.0
    for i in range(1000):
        prod *= 1 - min(1 - f[i + 1] / f[i], 0.999)
        abar.append(prod)
    assert net.schedule == "cosine" and net.alphas_cumprod.dtype == torch.float64
    assert torch.allclose(net.alphas_cumprod, torch.tensor(abar, dtype=torch.float64), rtol=1e-12, atol=0)
    assert net.sigma_min == pytest.approx(math.sqrt(1 / abar[0] - 1)) and net.sigma_max == pytest.approx(
        math.sqrt(1 / abar[-1] - 1))
    lin = ADMPrecond(16, 3, model_channels=32, num_res_blocks=1, attention_resolutions=[], channel_mult=[1])
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.allclose(lin.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-12)
    # rounding: just below the geometric midpoint of two levels goes to the lower one
    mid = float((lin.sigmas[10] * lin.sigmas[11]).sqrt())
    assert lin.timestep(torch.tensor([mid * 0.999, mid * 1.001])).tolist() == [10, 11]
    assert float(lin.round_sigma(torch.tensor(mid * 0.999, dtype=torch.float64))) == pytest.approx(
        float(lin.sigmas[10]))
    # v-prediction: D = x / (1 + s^2) - s v / sqrt(1 + s^2) for the network's v
    v_net = ADMPrecond(16, 3, prediction="v", model_channels=32, num_res_blocks=1, attention_resolutions=[],
                       channel_mult=[1])
    randomize(v_net, seed=1, scale=0.1)
    x, sig = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        v = v_net.model(x / (1 + sig.reshape(-1, 1, 1, 1) ** 2).sqrt(), v_net.timestep(sig).float())
        s4 = sig.reshape(-1, 1, 1, 1)
        assert torch.allclose(v_net(x, sig), x / (1 + s4**2) - s4 * v / (1 + s4**2).sqrt(), atol=1e-5)
    cd = build_preset("cd-imagenet64-tiny")
    c_skip, c_out, c_in, _ = cd.coefficients(torch.tensor([0.002, 80.0]))
    assert c_skip[0] == 1 and c_out[0] == 0 and c_in[1] == pytest.approx(1 / math.sqrt(80**2 + 0.25))
    assert (cd.sigma_min, cd.sigma_max, cd.sigma_data, cd.distillation) == (0.002, 80.0, 0.5, True)


# --- Skip-Tuning ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return randomize(build_preset("adm-guided-imagenet64-tiny"), seed=3, scale=0.1)


def inputs(net, n=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 16, 16, generator=g)
    return x, torch.tensor([0.05, 1.0, 12.0][:n]), torch.tensor([0, 4, 9][:n])


def ref_resblock(block, x_norm, x_skip, emb):
    """A (non-resampling) ResBlock whose GroupNorm path sees ``x_norm`` and whose skip_connection sees ``x_skip``."""
    norm, act, conv = block.in_layers
    h = conv(act(norm(x_norm)))
    e = block.emb_layers(emb)[:, :, None, None]
    out_norm, out_act, _, out_conv = block.out_layers
    if block.use_scale_shift_norm:
        scale, shift = e.chunk(2, dim=1)
        h = out_norm(h) * (1 + scale) + shift
    else:
        h = out_norm(h + e)
    return block.skip_connection(x_skip) + out_conv(out_act(h))


def reference_forward(net, x, sigma, y, rhos, mode="concat"):
    """The ADM denoiser as a loop over the UNet's blocks; the skip popped by output_blocks.i is times rhos[i] in
    the concatenation (concat), or only in the input of its ResBlock's skip_connection (residual) or GroupNorm
    (norm)."""
    m = net.model
    s4 = sigma.reshape(-1, 1, 1, 1)
    t = net.timestep(sigma).float()
    emb = m.time_embed(time_features(m.model_channels, t)) + m.label_emb(y)
    h = 1 / (s4**2 + 1).sqrt() * x
    hs = []
    for block in m.input_blocks:
        h = block(h, emb)
        hs.append(h)
    h = m.middle_block(h, emb)
    for i, block in enumerate(m.output_blocks):
        d = hs.pop()
        plain, scaled = torch.cat([h, d], 1), torch.cat([h, rhos[i] * d], 1)
        if mode == "concat":
            h = ref_resblock(block[0], scaled, scaled, emb)
        elif mode == "residual":
            h = ref_resblock(block[0], plain, scaled, emb)
        else:
            h = ref_resblock(block[0], scaled, plain, emb)
        for layer in block[1:]:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
    return x - s4 * m.out(h)[:, :3]


def test_sites_innermost_first(net):
    sites = skip_sites(net)
    assert [s.name for s in sites] == [f"output_blocks.{i}" for i in range(16)]
    assert [s.resolution for s in sites] == [2] * 4 + [4] * 4 + [8] * 4 + [16] * 4
    assert {(s.skip_channels, s.main_channels) for s in sites} == {(32, 32)}


@pytest.mark.parametrize("name, out_channels, params", [("adm-guided-imagenet64", 6, 295_904_454),
                                                        ("cd-imagenet64", 3, 295_899_267)])
def test_full_size_sites_and_size(name, out_channels, params):
    with torch.device("meta"):
        big = build_preset(name)
    # ADM ImageNet-64 (Dhariwal & Nichol 2021): 296M parameters
    assert sum(p.numel() for p in big.parameters()) == params
    assert big.model.out[2].weight.shape[0] == out_channels
    info = describe(big)  # what `skiptune info --arch NAME` prints
    sites = info["sites"]
    assert len(sites) == 16 and [s["index"] for s in sites] == list(range(16))
    assert [s["resolution"] for s in sites] == [8] * 4 + [16] * 4 + [32] * 4 + [64] * 4
    assert [s["stage"] for s in sites] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    # encoder widths 192 (conv), 3 x 192, 192 (down), 3 x 384, 384, 3 x 576, 576, 3 x 768, popped last first
    assert [s["skip_channels"] for s in sites] == [768, 768, 768, 576, 576, 576, 576, 384, 384, 384, 384, 192,
                                                   192, 192, 192, 192]
    assert [s["main_channels"] for s in sites] == [768, 768, 768, 768, 768, 576, 576, 576, 576, 384, 384, 384,
                                                   384, 192, 192, 192]


def test_all_ones_rule_is_bit_identical(net):
    x, s, y = inputs(net)
    base = net(x, s, y)
    for mode in ("concat", "residual", "norm"):
        with skip_tuning(net, "const:1", mode=mode):
            assert torch.equal(net(x, s, y), base), mode
    assert torch.equal(net(x, s, torch.eye(10)[y]), base)


@pytest.mark.parametrize("mode", ["concat", "residual", "norm"])
def test_const_rule_equals_reference_forward(net, mode):
    x, s, y = inputs(net)
    with torch.no_grad():
        ones = reference_forward(net, x, s, y, [1.0] * 16, mode)
        assert (net(x, s, y) - ones).abs().max() <= 1e-5
        ref = reference_forward(net, x, s, y, [0.7] * 16, mode)
        with skip_tuning(net, "const:0.7", mode=mode):
            tuned = net(x, s, y)
    assert (tuned - ref).abs().max() <= 1e-5  # measured: 0.0 (outputs up to 51)
    assert (tuned - ones).abs().max() > 1e-2
    assert not any(m._forward_pre_hooks for m in net.modules())


def test_per_site_values_equal_reference_forward(net):
    x, s, y = inputs(net)
    rhos = [0.6 + 0.05 * i for i in range(16)]
    with torch.no_grad():
        ref = reference_forward(net, x, s, y, rhos)
        with skip_tuning(net, Sites(tuple(rhos))):
            tuned = net(x, s, y)
    assert (tuned - ref).abs().max() <= 1e-5


def test_cd_tiny_sites_and_modes():
    cd = randomize(build_preset("cd-imagenet64-tiny"), seed=5, scale=0.1)
    assert len(skip_sites(cd)) == 16
    x, s, y = inputs(cd)
    with torch.no_grad():
        base = cd(x, s, y)
        change = {}
        for mode in ("concat", "residual", "norm"):
            with skip_tuning(cd, "layer:0.8", mode=mode):
                change[mode] = (cd(x, s, y) - base).abs().max()
    assert change["concat"] > 1e-2 and change["residual"] > 1e-2
    # 32 groups over 32 + 32 channels: the skip channels are whole groups, which GroupNorm rescales back, so
    # 'norm' changes nothing but through the eps of the normalisation (App. C: concat acts through the shortcut
    # except in a group straddling the boundary)
    assert change["norm"] < 1e-4


def test_fp16_torso():
    cd = randomize(build_preset("cd-imagenet64-tiny"), seed=1, scale=0.05)
    x, s, y = inputs(cd, 2)
    with torch.no_grad():
        full = cd(x, s, y)
        cd.model.convert_to_fp16()  # convolutions of the input, middle and output blocks only, as the public code
        assert cd.model.dtype == torch.float16 and cd.model.out[2].weight.dtype == torch.float32
        assert cd.model.time_embed[0].weight.dtype == torch.float32
        half = cd(x, s, y)
    assert half.dtype == torch.float32 and (half - full).abs().max() <= 1e-2 * full.abs().max()


def test_generate_runs_and_is_finite():
    tiny = randomize(build_preset("adm-guided-imagenet64-tiny"), seed=1, scale=0.05)
    out = generate(tiny, "0-3", SamplingSpec("heun", nfe=5), rule="layer:0.8")
    assert out.images.shape == (4, 3, 16, 16) and torch.isfinite(out.images).all()
    assert out.labels is not None and out.labels.shape == (4,)


# --- loading ---------------------------------------------------------------------------------------------------


def test_public_state_dict_files_load(tmp_path):
    for preset in ("adm-guided-imagenet64-tiny", "cd-imagenet64-tiny"):
        state = {k: v + 0.01 for k, v in build_preset(preset).model.state_dict().items()}  # bare UNet keys
        path = tmp_path / f"{preset}.pt"
        torch.save(state, path)
        for opened in (open_model(path, arch=preset), open_model(path)):  # given, then inferred from the shapes
            assert opened.loader == "openai-unet" and opened.network["class_name"] in ("ADMPrecond", "CMPrecond")
            loaded = opened.net.model.state_dict()
            assert all(torch.equal(loaded[k], state[k]) for k in state)
        again = load_checkpoint(save_checkpoint(opened.net, tmp_path / f"{preset}.safetensors"))
        assert type(again) is type(opened.net) and torch.equal(again.model.out[2].weight, state["out.2.weight"])


def test_loading_errors_name_the_keys_and_the_fix(tmp_path):
    torch.save(build_preset("cd-imagenet64-tiny").model.state_dict(), tmp_path / "cd.pt")
    # the CD network has 3 output channels and 2-D attention convolutions; the guided-diffusion preset 6 and 1-D
    with pytest.raises(CheckpointError, match=r"mis-shaped: .*qkv\.weight.*--arch"):
        load_model(tmp_path / "cd.pt", arch="adm-guided-imagenet64-tiny")
    with pytest.raises(CheckpointError, match="is not an OpenAI UNet"):
        load_model(tmp_path / "cd.pt", arch="adm-tiny")
    _, _, _, state, _ = read_fixture("gd-pool")
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="matches no preset.*--arch"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"missing: .*input_blocks.*--arch"):
        load_model(tmp_path / "other.pt", arch="cd-imagenet64-tiny")
