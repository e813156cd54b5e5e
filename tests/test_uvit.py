"""U-ViT: public checkpoint naming, the VP wrappers, Skip-Tuning sites, loading and the CLI."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import randomize
from skiptune.cli.info import describe
from skiptune.io import CheckpointError, load_checkpoint, load_model, open_model, save_checkpoint
from skiptune.nets import build_preset
from skiptune.nets.uvit import TimestepEmbedding, UViT
from skiptune.skip import Sites, skip_sites, skip_tuning

# The nnet sections of the public configs (baofff/U-ViT configs/imagenet256_uvit_{large,huge}.py),
# with UViT's defaults (conv=True) made explicit.
PUBLIC_LARGE = dict(img_size=32, patch_size=2, in_chans=4, embed_dim=1024, depth=20, num_heads=16, mlp_ratio=4,
                    qkv_bias=False, mlp_time_embed=False, num_classes=1001, conv=True)
PUBLIC_HUGE = dict(img_size=32, patch_size=2, in_chans=4, embed_dim=1152, depth=28, num_heads=16, mlp_ratio=4,
                   qkv_bias=False, mlp_time_embed=False, num_classes=1001, conv=False)
# Our tiny presets: the same configurations at 8x8 with 10 classes (+ the null class) and width 32.
TINY = dict(img_size=8, embed_dim=32, num_heads=4, num_classes=11)


def public_shapes(img_size, patch_size, in_chans, embed_dim, depth, num_classes, mlp_ratio=4, qkv_bias=False,
                  mlp_time_embed=False, conv=True, num_heads=None):
    """Parameter names and shapes of a public U-ViT, written from the architecture.

    Tokens: [label] + [time] + (img_size/patch_size)^2 patches; depth//2 in_blocks, one mid_block and
    depth//2 out_blocks with a Linear(2D, D) skip fusion; timm-style attention (qkv, proj) and
    Mlp (fc1, fc2); LayerNorms with weight and bias; a patch-pixel decoder and an optional 3x3 conv.
    """
    d, hidden, pix = embed_dim, int(embed_dim * mlp_ratio), patch_size**2 * in_chans
    extras = 2 if num_classes > 0 else 1
    shapes = {"pos_embed": (1, extras + (img_size // patch_size) ** 2, d),
              "patch_embed.proj.weight": (d, in_chans, patch_size, patch_size), "patch_embed.proj.bias": (d,)}
    if mlp_time_embed:
        shapes.update({"time_embed.0.weight": (4 * d, d), "time_embed.0.bias": (4 * d,),
                       "time_embed.2.weight": (d, 4 * d), "time_embed.2.bias": (d,)})
    if num_classes > 0:
        shapes["label_emb.weight"] = (num_classes, d)

    def block(prefix, skip):
        b = {"norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d)}
        if qkv_bias:
            b["attn.qkv.bias"] = (3 * d,)
        b.update({"attn.proj.weight": (d, d), "attn.proj.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
                  "mlp.fc1.weight": (hidden, d), "mlp.fc1.bias": (hidden,), "mlp.fc2.weight": (d, hidden),
                  "mlp.fc2.bias": (d,)})
        if skip:
            b.update({"skip_linear.weight": (d, 2 * d), "skip_linear.bias": (d,)})
        shapes.update({f"{prefix}.{k}": v for k, v in b.items()})

    for i in range(depth // 2):
        block(f"in_blocks.{i}", False)
    block("mid_block", False)
    for i in range(depth // 2):
        block(f"out_blocks.{i}", True)
    shapes.update({"norm.weight": (d,), "norm.bias": (d,), "decoder_pred.weight": (pix, d),
                   "decoder_pred.bias": (pix,)})
    if conv:
        shapes.update({"final_layer.weight": (in_chans, in_chans, 3, 3), "final_layer.bias": (in_chans,)})
    return shapes


def public_state(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v, generator=g) * 0.1 for k, v in shapes.items()}


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread):
    yield


@pytest.fixture(scope="module", params=["uvit-tiny", "uvit-imagenet256-huge-tiny"])
def net(request):
    # weights of about 1/sqrt(fan_in), so that every skip, even the innermost, visibly moves the output
    torch.manual_seed(0)  # the initialisation too: the same weights whatever ran before
    return randomize(build_preset(request.param), seed=3, scale=0.15)


def inputs(net, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, net.img_channels, net.img_resolution, net.img_resolution, generator=g)
    sigma = torch.tensor([0.05, 1.0, 12.0][:n])
    return x, sigma, torch.eye(net.label_dim)[[0, 4, 9][:n]]


# --- architecture and naming --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, public", [("uvit-imagenet256-large", PUBLIC_LARGE),
                                          ("uvit-imagenet256-huge", PUBLIC_HUGE),
                                          ("uvit-tiny", {**PUBLIC_LARGE, **TINY}),
                                          ("uvit-imagenet256-huge-tiny", {**PUBLIC_HUGE, **TINY})])
def test_presets_have_the_public_names_and_shapes(name, public):
    with torch.device("meta"):
        net = build_preset(name)
    ours = {k: tuple(v.shape) for k, v in net.model.state_dict().items()}
    assert ours == public_shapes(**public)
    assert net.model.extras == 2 and net.label_dim == public["num_classes"] - 1 and net.null_label


@pytest.mark.parametrize("name, public, paper", [("uvit-imagenet256-large", PUBLIC_LARGE, 287e6),
                                                 ("uvit-imagenet256-huge", PUBLIC_HUGE, 501e6)])
def test_parameter_counts_match_the_paper(name, public, paper):
    with torch.device("meta"):
        net = build_preset(name)
    expected = sum(math.prod(s) for s in public_shapes(**public).values())
    assert sum(p.numel() for p in net.parameters()) == expected
    assert abs(expected - paper) / paper < 0.005  # U-ViT paper (Bao et al. 2023): U-ViT-L 287M, U-ViT-H 501M
    info = describe(net)
    assert info["architecture"] == "UViT" and info["parameters"] == expected
    assert len(info["sites"]) == public["depth"] // 2
    assert {(s["resolution"], s["skip_channels"], s["main_channels"]) for s in info["sites"]} == \
        {(16, public["embed_dim"], public["embed_dim"])}


@pytest.mark.parametrize("options", [dict(mlp_time_embed=True, qkv_bias=True, num_classes=-1, conv=False),
                                     dict(num_classes=5, depth=5, mlp_ratio=2)])
def test_state_dict_round_trip_of_other_configurations(options):
    cfg = {**dict(img_size=8, patch_size=2, in_chans=3, embed_dim=16, depth=4, num_heads=2), **options}
    state = public_state(public_shapes(**cfg))
    model = UViT(**cfg)
    model.load_state_dict(state, strict=True)
    out = model.state_dict()
    assert list(out) == list(state)
    assert all(torch.equal(out[k], state[k]) for k in state)


def test_state_dict_file_round_trip_through_load_model(tmp_path):
    shapes = public_shapes(**{**PUBLIC_LARGE, **TINY})
    state = public_state(shapes)
    path = tmp_path / "nnet_ema.pth"
    torch.save(state, path)
    for opened in (open_model(path, arch="uvit-tiny"), open_model(path)):  # given, then inferred from the shapes
        net = opened.net
        assert opened.network["kwargs"]["schedule"] == "vp" and opened.loader == "uvit"
        loaded = net.model.state_dict()
        assert set(loaded) == set(shapes) and all(torch.equal(loaded[k], state[k]) for k in state)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    assert torch.equal(load_model(wrapped).model.pos_embed, state["pos_embed"])
    # our own format keeps the wrapper's "model." prefix and the config
    again = load_checkpoint(save_checkpoint(load_model(path), tmp_path / "uvit.safetensors"))
    assert torch.equal(again.model.pos_embed, state["pos_embed"]) and again.schedule == "vp"


def test_loading_errors_name_the_problem(tmp_path):
    state = public_state(public_shapes(**{**PUBLIC_LARGE, **TINY, "embed_dim": 48}))
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="matches no U-ViT preset.*--arch"):
        load_model(tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="do not match preset uvit-tiny"):
        load_model(tmp_path / "odd.pth", arch="uvit-tiny")
    with pytest.raises(CheckpointError, match="not a U-ViT"):
        load_model(tmp_path / "odd.pth", arch="adm-tiny")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a U-ViT state dict.*arch=PRESET"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "code.pth").write_bytes(b"cbuiltins\nprint\n(S'unsafe'\ntR.")  # a pickle that would run code
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(tmp_path / "code.pth")


def public_timestep_embedding(timesteps, dim, max_period=10000):
    """The time features of the public U-ViT (baofff/U-ViT, libs/uvit.py, ``timestep_embedding``), transcribed:
    float32 frequencies exp(-ln(max_period) * arange(half) / half), built on the CPU and then moved, times the
    float32 timesteps; cos half first; a zero column when dim is odd."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs.to(device=timesteps.device)[None]
    out = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        out = torch.cat([out, torch.zeros_like(out[:, :1])], dim=-1)
    return out


@pytest.mark.parametrize("dim", [32, 1024, 1152, 33])
def test_time_embedding_is_bit_identical_to_the_public_one(dim):
    t = torch.tensor([0.0, 1.0, 500.0, 998.0, 999.0, 0.5, 1e-3, 123.456, 998.999, 999 * 0.731])
    ours = TimestepEmbedding(dim)(t)
    assert ours.dtype == torch.float32 and ours.shape == (len(t), dim)
    assert torch.equal(ours, public_timestep_embedding(t, dim))
    assert torch.equal(TimestepEmbedding(dim)(t.double()), ours)  # the time is taken in float32, as in U-ViT
    if dim % 2 == 0:
        # what the test guards against: the power form of the same frequencies is a few ulp off
        power = t[:, None] * (1 / 10000) ** (torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))[None]
        assert (torch.cat([power.cos(), power.sin()], 1) - ours).abs().max() > 1e-6


def test_the_models_use_the_public_time_embedding(net):
    t = torch.tensor([0.0, 999.0, 421.75])
    assert isinstance(net.model.map_time, TimestepEmbedding)
    assert torch.equal(net.model.map_time(t), public_timestep_embedding(t, net.model.embed_dim))


# --- the denoiser wrappers ----------------------------------------------------------------------------------


def test_discrete_schedule_is_stable_diffusion_with_timesteps_from_one():
    net = build_preset("uvit-imagenet256-huge-tiny")
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    abar = np.cumprod(1 - betas)  # abar_n for n = 1..1000
    sig = np.sqrt(1 / abar - 1)
    assert net.sigma_min == pytest.approx(sig[0], rel=1e-12) and net.sigma_max == pytest.approx(sig[-1], rel=1e-12)
    n = torch.tensor([0, 1, 499, 999])
    assert net.timestep(torch.as_tensor(sig)[n].float()).tolist() == (n + 1).tolist()
    between = float(np.sqrt(sig[10] * sig[11]) * 0.999)  # just below the geometric midpoint -> nearer level 10
    # default: DPM-Solver's continuous time, log alpha linear in t between the levels n = 11 and 12
    la = 0.5 * np.log(abar)
    la_b = -0.5 * np.log1p(between**2)
    assert net.timestep(torch.tensor([between], dtype=torch.float64)).item() == pytest.approx(
        11 + (la_b - la[10]) / (la[11] - la[10]), rel=1e-6)
    assert float(net.round_sigma(torch.tensor(between, dtype=torch.float64))) == pytest.approx(sig[10])
    net.time_input = "round"
    assert net.timestep(torch.tensor([between])).item() == 11
    assert net.timestep(torch.as_tensor(sig)[n].float()).tolist() == (n + 1).tolist()


def test_continuous_schedule_time_input():
    net = build_preset("uvit-tiny")
    t = torch.tensor([1e-4, 0.3, 1.0], dtype=torch.float64)
    sigma = torch.expm1(0.1 * t + 0.5 * 19.9 * t**2).sqrt()  # the VP SDE with beta 0.1..20
    assert torch.allclose(net.timestep(sigma).double(), 999 * t, rtol=1e-5)
    assert net.sigma_min == pytest.approx(float(sigma[0])) and net.sigma_max == pytest.approx(float(sigma[2]))


def test_labels_one_hot_integer_and_null(net):
    x, s, c = inputs(net)
    base = net(x, s, c)
    assert torch.equal(net(x, s, torch.tensor([0, 4, 9])), base)
    null = net(x, s)
    y_null = torch.full((3,), net.label_dim)
    eps = net.model(x / (1 + s.reshape(-1, 1, 1, 1) ** 2).sqrt(), net.timestep(s), y_null)
    assert torch.allclose(null, x - s.reshape(-1, 1, 1, 1) * eps, atol=1e-4)


# --- Skip-Tuning --------------------------------------------------------------------------------------------


def test_sites_innermost_first(net):
    sites = skip_sites(net)
    depth = len(net.model.in_blocks) * 2
    assert len(sites) == depth // 2 == len(net.model.out_blocks)
    assert [s.index for s in sites] == list(range(depth // 2))
    assert [s.name for s in sites] == [f"out_blocks.{i}" for i in range(depth // 2)]
    assert {(s.resolution, s.skip_channels, s.main_channels) for s in sites} == {(4, 32, 32)}


def test_all_ones_rule_is_bit_identical(net):
    x, s, c = inputs(net)
    base = net(x, s, c)
    k = len(skip_sites(net))
    for rule in ("none", "layer:1", "const:1", Sites((1.0,) * k), "ramp:up:1", "window:0:100:const:1"):
        with skip_tuning(net, rule):
            assert torch.equal(net(x, s, c), base), rule


def test_detach_and_exceptions_restore_exact_output(net):
    x, s, c = inputs(net)
    base = net(x, s, c)
    handle = skip_tuning(net, "layer:0.6")
    assert not torch.allclose(net(x, s, c), base)
    handle.remove()
    assert torch.equal(net(x, s, c), base)
    with pytest.raises(KeyError):
        with skip_tuning(net, "ramp:up:0.5:0.01:20"):
            raise KeyError("boom")
    assert not any(m._forward_pre_hooks for m in net.modules())
    assert torch.equal(net(x, s, c), base)


def test_only_concat_mode(net):
    for mode in ("residual", "norm"):
        with pytest.raises(ValueError, match="not available for U-ViT"):
            skip_tuning(net, "layer:0.7", mode=mode)
    assert not any(m._forward_pre_hooks for m in net.modules())


def reference_forward(net, x, sigma, y, rhos):
    """The U-ViT denoiser written out with functional ops; the skip popped by out_blocks.i is times rhos[i]."""
    m, p = net.model, dict(net.model.named_parameters())
    d, heads, ps, c = m.embed_dim, m.in_blocks[0].attn.num_heads, m.patch_size, m.in_chans
    if net.schedule == "vp":
        t = 999 * ((0.1**2 + 2 * 19.9 * torch.log1p(sigma.double() ** 2)).sqrt() - 0.1) / 19.9
    elif net.time_input == "round":
        t = (sigma.double().log()[:, None] - net.sigmas.log()[None]).abs().argmin(1) + 1
    else:  # log alpha linear in t between the levels n = 1..N (DPM-Solver's discrete schedule), as numpy does it
        neg_log_alpha = -0.5 * np.log(net.alphas_cumprod.numpy())
        t = torch.as_tensor(np.interp(0.5 * np.log1p(sigma.double().numpy() ** 2), neg_log_alpha,
                                      np.arange(1, len(neg_log_alpha) + 1)))
    s4 = sigma.reshape(-1, 1, 1, 1)
    h = x / (1 + s4**2).sqrt()
    patches = F.conv2d(h, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=ps)
    patches = patches.flatten(2).transpose(1, 2)
    freqs = torch.exp(-math.log(10000) * torch.arange(d // 2) / (d // 2))
    arg = t.float()[:, None] * freqs[None]
    time = torch.cat([arg.cos(), arg.sin()], 1)
    z = torch.cat([p["label_emb.weight"][y][:, None], time[:, None], patches], 1) + p["pos_embed"]

    def block(pre, z, skip=None):
        if skip is not None:
            z = F.linear(torch.cat([z, skip], -1), p[f"{pre}.skip_linear.weight"], p[f"{pre}.skip_linear.bias"])
        a = F.layer_norm(z, (d,), p[f"{pre}.norm1.weight"], p[f"{pre}.norm1.bias"])
        q, k, v = F.linear(a, p[f"{pre}.attn.qkv.weight"]).split(d, -1)
        q, k, v = (u.reshape(*u.shape[:2], heads, d // heads).transpose(1, 2) for u in (q, k, v))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1)
        att = (w @ v).transpose(1, 2).reshape(z.shape)
        z = z + F.linear(att, p[f"{pre}.attn.proj.weight"], p[f"{pre}.attn.proj.bias"])
        a = F.layer_norm(z, (d,), p[f"{pre}.norm2.weight"], p[f"{pre}.norm2.bias"])
        a = F.gelu(F.linear(a, p[f"{pre}.mlp.fc1.weight"], p[f"{pre}.mlp.fc1.bias"]))
        return z + F.linear(a, p[f"{pre}.mlp.fc2.weight"], p[f"{pre}.mlp.fc2.bias"])

    skips = []
    for i in range(len(m.in_blocks)):
        z = block(f"in_blocks.{i}", z)
        skips.append(z)
    z = block("mid_block", z)
    for i in range(len(m.out_blocks)):
        z = block(f"out_blocks.{i}", z, rhos[i] * skips.pop())
    z = F.layer_norm(z, (d,), p["norm.weight"], p["norm.bias"])
    z = F.linear(z, p["decoder_pred.weight"], p["decoder_pred.bias"])[:, 2:]
    side = m.tokens_per_side
    z = z.reshape(z.shape[0], side, side, ps, ps, c)  # token (row, col), pixel (row, col, channel)
    eps = torch.zeros_like(x)
    for a in range(ps):
        for b in range(ps):
            eps[:, :, a::ps, b::ps] = z[:, :, :, a, b, :].permute(0, 3, 1, 2)
    if "final_layer.weight" in p:
        eps = F.conv2d(eps, p["final_layer.weight"], p["final_layer.bias"], padding=1)
    return x - s4 * eps


def test_one_site_matches_reference_forward(net):
    x, s, c = inputs(net)
    y = c.argmax(1)
    k = len(skip_sites(net))
    ones = [1.0] * k
    assert torch.allclose(net(x, s, c), reference_forward(net, x, s, y, ones), atol=2e-5)
    for site, rho in ((0, 0.6), (k // 2, 1.3), (k - 1, 0.8)):
        rhos = list(ones)
        rhos[site] = rho
        with skip_tuning(net, Sites(tuple(rhos))):
            tuned = net(x, s, c)
        ref = reference_forward(net, x, s, y, rhos)
        assert torch.allclose(tuned, ref, atol=2e-5), site
        assert (tuned - reference_forward(net, x, s, y, ones)).abs().max() > 0.1, site
    layer = [0.7 + 0.3 * i / (k - 1) for i in range(k)]  # Def. 3.1: innermost 0.7 ... outermost 1
    with skip_tuning(net, "layer:0.7"):
        assert torch.allclose(net(x, s, c), reference_forward(net, x, s, y, layer), atol=2e-5)
    # a sigma-dependent rule sees each sample's sigma through the wrapper: rho_0 at 0.01 rising to 1 at 20
    ramp = (0.5 + 0.5 * (s.double() - 0.01) / (20 - 0.01)).float().reshape(-1, 1, 1)
    with skip_tuning(net, "ramp:up:0.5:0.01:20"):
        tuned = net(x, s, c)
    ref = reference_forward(net, x, s, y, [ramp] * k)
    # the rule evaluates rho in another precision than the reference: float32 round-off of the output's scale
    assert (tuned - ref).abs().max() <= 1e-5 * ref.abs().max()


# --- command line -------------------------------------------------------------------------------------------


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: extra threads only wait on a busy machine
    return subprocess.run([sys.executable, "-m", "skiptune", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_info_and_sample_through_the_entry_point(tmp_path):
    state = public_state(public_shapes(**{**PUBLIC_LARGE, **TINY}))
    torch.save(state, tmp_path / "nnet_ema.pth")
    out = run_cli("info", "--model", str(tmp_path / "nnet_ema.pth"), "--rule", "layer:0.82", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["architecture"] == "UViT" and [s["name"] for s in info["sites"]][:2] == ["out_blocks.0", "out_blocks.1"]
    assert len(info["sites"]) == 10 and info["sites"][0]["rho"] == 0.82 and info["sites"][-1]["rho"] == 1.0
    assert info["parameters"] == sum(v.numel() for v in state.values())

    out = run_cli("sample", "--model", str(tmp_path / "nnet_ema.pth"), "--arch", "uvit-tiny", "--sampler", "heun",
                  "--nfe", "3", "--seeds", "0-2", "--rule", "layer:0.8", "--no-progress", "--out", str(tmp_path / "s"))
    assert out.returncode == 0, out.stderr
    assert "latent model" in out.stdout and not (tmp_path / "s" / "grid.png").exists()
    with np.load(tmp_path / "s" / "latents.npz") as f:
        assert f["latents"].shape == (3, 4, 8, 8) and f["latents"].dtype == np.float32
        assert np.isfinite(f["latents"]).all() and f["seeds"].tolist() == [0, 1, 2] and len(f["labels"]) == 3
        assert float(f["latent_scale_factor"]) == 0.18215
    config = json.loads((tmp_path / "s" / "config.json").read_text())["config"]
    assert config["output"] == "latents" and config["rule"].startswith("layer:0.8")
