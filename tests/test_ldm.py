"""CompVis latent diffusion in the OpenAI UNet family: the spatial transformer and the denoiser against the public
code, the full cin256-v2 names and shapes, Skip-Tuning sites, the .ckpt loader, the first stage through diffusers,
guidance with the null class, and the analyses on the family's tiny presets."""

import argparse
import json
import math

import numpy as np
import pytest
import torch

from conftest import randomize
from openai_fixtures import MAKER, load_fixture, time_features
from skiptune.analysis.complexity import ComplexityConfig, run_complexity
from skiptune.analysis.norms import NormsConfig, run_norms
from skiptune.cli import main
from skiptune.cli.info import describe
from skiptune.core.denoiser import DenoiserInfo
from skiptune.experiment import SamplingSpec, generate
from skiptune.io import CheckpointError, load_model, open_model
from skiptune.io.ldm import convert_first_stage, denoiser_state, first_stage_config
from skiptune.io.uvit import load_strict
from skiptune.io.vae import load_decoder
from skiptune.nets import build_preset
from skiptune.nets.openai_unet import LDMPrecond, OpenAIUNet, SpatialTransformer
from skiptune.skip import Sites, skip_sites, skip_tuning

FIXTURES = ["ldm-cin-vq", "ldm-kl"]
UNET = "model.diffusion_model."
pytestmark = pytest.mark.usefixtures("one_thread")


def read_fixture(name):
    """(LatentDiffusion kwargs, metadata, parameters by public name, tensors) of a fixture."""
    meta, tensors, keys, state = load_fixture(name)
    return json.loads(meta["config"]), meta, state, tensors


def ldm_from_fixture(name):
    """Our LDMPrecond with the fixture's configuration and weights (the cin fixture's last class is its null class)."""
    cfg, meta, state, _ = read_fixture(name)
    unet = dict(cfg["unet_config"]["params"])
    res, channels = unet.pop("image_size"), unet.pop("in_channels")
    assert unet.pop("out_channels") == channels
    classes = cfg["cond_stage_config"]["params"]["n_classes"]
    null = name == "ldm-cin-vq"
    net = LDMPrecond(res, channels, label_dim=classes - null, null_label=null,
                     latent_scale_factor=float(meta["scale_factor"]), linear_start=cfg["linear_start"],
                     linear_end=cfg["linear_end"], num_timesteps=cfg["timesteps"], **unet).eval()
    load_strict(net, denoiser_state(state), name, "LDMPrecond")
    return net


# --- equality with the public code --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_public_unets_load_strictly_and_outputs_match(name):
    cfg, _, state, t = read_fixture(name)
    model = OpenAIUNet(**cfg["unet_config"]["params"]).eval()
    public = [(k[len(UNET):], s) for k, s in json.loads(read_fixture(name)[1]["keys"]) if k.startswith(UNET)]
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == public  # names, shapes and order
    model.load_state_dict({k[len(UNET):]: v for k, v in state.items() if k.startswith(UNET)}, strict=True)
    assert sum(isinstance(m, SpatialTransformer) for m in model.modules()) > 0
    with torch.no_grad():
        eps = model(t["x"], t["t"], context=t["context"])  # the class embedder's one-token context
        out3 = model(t["x"], t["t"], context=t["context3"])  # three tokens: the cross-attention softmax matters
    # measured: 5.9e-7 / 5.5e-7 (cin), 8.9e-7 / 1.1e-6 (kl), outputs up to 0.75: float32 rounding of the attention
    assert (eps - t["eps"]).abs().max() <= 1e-5
    assert (out3 - t["out_context3"]).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="context"):
        model(t["x"], t["t"])


@pytest.mark.parametrize("name", FIXTURES)
def test_denoiser_matches_public_predict_start_from_noise(name):
    _, _, _, t = read_fixture(name)
    net = ldm_from_fixture(name)
    # LDM's "linear" betas: float64 schedule, stored as a float32 buffer by the public code
    assert torch.equal(net.alphas_cumprod.to(torch.float32), t["alphas_cumprod"])  # measured: equal
    sigma = net.sigmas[t["t"]]
    assert torch.equal(net.timestep(sigma.float()), t["t"])
    x = t["x"] * (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt()  # x = x_t sqrt(1 + sigma^2)
    with torch.no_grad():
        d = net(x.float(), sigma.float(), t["labels"])
        onehot = net(x.float(), sigma.float(), torch.eye(net.label_dim)[t["labels"].clamp_max(net.label_dim - 1)])
    err = ((d - t["x0"]).abs().amax(dim=(1, 2, 3)) / (1 + sigma)).max()
    assert err <= 2e-6  # measured: <= 9.5e-7 of (1 + sigma) (sigma 0.039, 1.9, 84): float32 rounding of x - sigma eps
    if name == "ldm-cin-vq":  # label 10 is the null class: class_labels=None takes it
        assert net.null_label and DenoiserInfo.of(net).null_label
        with torch.no_grad():
            null = net(x.float(), sigma.float(), None)
            assert torch.equal(null, net(x.float(), sigma.float(), torch.full((3,), 10)))
        assert torch.equal(null[2], d[2])
        assert torch.equal(onehot[:2], d[:2])
    else:
        assert torch.equal(onehot, d)
        with pytest.raises(ValueError, match="without a null label"):
            net(x.float(), sigma.float(), None)


def test_full_cin256_v2_names_shapes_and_sites():
    _, meta, _, _ = read_fixture("ldm-cin-vq")
    with torch.device("meta"):
        full = build_preset("ldm-imagenet256")
    public = [(UNET + k[len("model."):] if k.startswith("model.") else k, list(v.shape))
              for k, v in full.state_dict().items()]
    # the public UNetModel + ClassEmbedder of configs/latent-diffusion/cin256-v2.yaml: 689 tensors, 401,433,091
    # parameters, in the same order with the same names (after the prefix) and shapes
    assert (len(public), sum(math.prod(s) for _, s in public)) == (int(meta["cin256_v2_tensors"]),
                                                                  int(meta["cin256_v2_parameters"]))
    assert MAKER._shapes_sha256(public) == meta["cin256_v2_sha256"]
    info = describe(full)  # what `skiptune info --arch ldm-imagenet256` prints
    sites = info["sites"]
    assert info["precond"] == "LDMPrecond" and len(sites) == 12
    assert [s["resolution"] for s in sites] == [8] * 3 + [16] * 3 + [32] * 3 + [64] * 3
    # encoder widths 192 (conv), 2 x 192, 192 (down), 2 x 384, 384, 2 x 576, 576, 2 x 960, popped last first
    assert [s["skip_channels"] for s in sites] == [960, 960, 576, 576, 576, 384, 384, 384, 192, 192, 192, 192]
    assert [s["main_channels"] for s in sites] == [960, 960, 960, 960, 576, 576, 576, 384, 384, 384, 192, 192]


def test_full_cin256_v2_first_stage_converts_for_diffusers():
    from diffusers import VQModel

    _, meta, _, _ = read_fixture("ldm-cin-vq")
    with torch.device("meta"):  # the VQ-f4 first stage of cin256-v2 by names and shapes only
        state = {k: torch.empty(s) for k, s in json.loads(meta["cin256_v2_first_stage"])}
        kind, config, converted = convert_first_stage(state)
        model = VQModel(**config)
    assert kind == "VQModel" and config["block_out_channels"] == [128, 256, 512] and config["layers_per_block"] == 2
    assert (config["num_vq_embeddings"], config["vq_embed_dim"], config["latent_channels"]) == (8192, 3, 3)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in
                                                                  model.state_dict().items()}


# --- checkpoints ------------------------------------------------------------------------------------------------


def first_stage(name="ldm-cin-vq"):
    """The fixture's first stage (public names, with the prefix) and, for the KL fixture, its stored scale_factor."""
    _, meta, state, _ = read_fixture(name)
    out = {k: v for k, v in state.items() if k.startswith("first_stage_model.")}
    if name == "ldm-kl":
        out["scale_factor"] = torch.tensor(float(meta["scale_factor"]))
    return out


def write_ldm_checkpoint(path, net, first=None, **extra):
    """``net`` (an LDMPrecond) as a latent-diffusion .ckpt: a torch zip with a state_dict of model.diffusion_model.*,
    cond_stage_model.*, first_stage_model.* and the float32 schedule buffers, as LatentDiffusion saves them."""
    state = {(UNET + k[len("model."):] if k.startswith("model.") else k): v.clone()
             for k, v in net.state_dict().items()}
    state.update(first if first is not None else first_stage())
    state["alphas_cumprod"] = net.alphas_cumprod.to(torch.float32)
    state["betas"] = (1 - net.alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64),
                                                          net.alphas_cumprod[:-1]])).to(torch.float32)
    torch.save({"state_dict": state, "global_step": 7, **extra}, path)
    return path


@pytest.mark.parametrize("name", FIXTURES)
def test_first_stage_decodes_as_the_public_one(name, tmp_path):
    _, meta, state, t = read_fixture(name)
    ckpt = tmp_path / "model.ckpt"
    write_ldm_checkpoint(ckpt, ldm_from_fixture(name), first_stage(name))
    decoder = load_decoder(ckpt)  # --vae model.ckpt: the checkpoint's own first stage, through diffusers
    assert decoder.kind == ("VQModel" if name == "ldm-cin-vq" else "AutoencoderKL")
    assert decoder.scale == float(meta["scale_factor"])  # kl: the stored scale_factor 0.5; cin: the default 1.0
    assert decoder.downsample == 2 and decoder.sha256 and decoder.image_shape(t["z"].shape) == (3, 16, 16)
    images = decoder.decode(t["z"])  # decode_first_stage(z): quantize (VQ) and decode z / scale_factor
    assert (images - t["decoded"]).abs().max() <= 1e-5  # measured: 1.5e-6 (cin), 1.3e-6 (kl); images up to 0.67
    assert load_decoder(ckpt, scale=2.0).scale == 2.0


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    net = randomize(build_preset("ldm-imagenet256-tiny"), seed=4, scale=0.1)
    return write_ldm_checkpoint(tmp_path_factory.mktemp("ldm") / "model.ckpt", net), net


def test_ckpt_loads_with_inferred_or_given_preset(tiny_ckpt):
    ckpt, net = tiny_ckpt
    for opened in (open_model(ckpt), open_model(ckpt, arch="ldm-imagenet256-tiny")):
        assert opened.loader == "ldm" and opened.network["class_name"] == "LDMPrecond"
        assert opened.network["kwargs"]["context_dim"] == 16
        loaded = opened.net.state_dict()
        assert loaded.keys() == net.state_dict().keys()
        assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
    x, s = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 4.0])
    with torch.no_grad():
        assert torch.equal(opened.net(x, s, torch.tensor([1, 2])), net(x, s, torch.tensor([1, 2])))


def test_bad_checkpoints_name_the_problem_and_the_fix(tiny_ckpt, tmp_path):
    ckpt, net = tiny_ckpt
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    (tmp_path / "junk.ckpt").write_bytes(b"\x93\x11 not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a latent-diffusion checkpoint: it is"):
        load_model(tmp_path / "junk.ckpt")
    torch.save(build_preset("cd-imagenet64-tiny").model.state_dict(), tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match=r"no model\.diffusion_model\.\* tensors.*openai UNet"):
        load_model(tmp_path / "foreign.ckpt")
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(lr=1.0)}, tmp_path / "code.ckpt")
    with pytest.raises(CheckpointError, match="weights-only loader refused.*never does.*keep only its weights"):
        load_model(tmp_path / "code.ckpt")
    with pytest.raises(CheckpointError, match="weights-only loader refused"):
        load_decoder(tmp_path / "code.ckpt")
    truncated = ckpt.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(truncated[: len(truncated) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path / "cut.ckpt")
    torch.save({"state_dict": {**state, "alphas_cumprod": state["alphas_cumprod"] ** 1.01}}, tmp_path / "sched.ckpt")
    with pytest.raises(CheckpointError, match="noise schedule.*--arch"):
        load_model(tmp_path / "sched.ckpt")
    text = {**state, "cond_stage_model.transformer.token_emb.weight": torch.zeros(4, 16)}
    torch.save({"state_dict": text}, tmp_path / "text.ckpt")
    with pytest.raises(CheckpointError, match="not a class embedder"):
        load_model(tmp_path / "text.ckpt")
    with pytest.raises(CheckpointError, match="not a latent-diffusion model"):
        load_model(ckpt, arch="cd-imagenet64-tiny")
    wide = {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}
    torch.save({"state_dict": wide}, tmp_path / "nofirst.ckpt")
    assert load_model(tmp_path / "nofirst.ckpt") is not None  # the denoiser does not need the first stage
    with pytest.raises(CheckpointError, match="no first stage to decode with.*--vae DIR"):
        load_decoder(tmp_path / "nofirst.ckpt")
    with pytest.raises(CheckpointError, match="describes a VQModel, not a AutoencoderKL"):
        load_decoder(ckpt, kind="AutoencoderKL")
    cin = read_fixture("ldm-cin-vq")[2]
    torch.save({"state_dict": cin}, tmp_path / "other.ckpt")  # no preset has the fixture's configuration
    with pytest.raises(CheckpointError, match="matches no preset.*--arch"):
        load_model(tmp_path / "other.ckpt")


def test_first_stage_config_from_shapes():
    kind, config = first_stage_config(first_stage("ldm-kl"))
    assert kind == "AutoencoderKL" and config["latent_channels"] == 4 and config["block_out_channels"] == [32, 64]


# --- Skip-Tuning ------------------------------------------------------------------------------------------------


def reference_forward(net, x, sigma, y, rhos):
    """The LDM denoiser as a loop over the layers of the UNet's blocks (its joins never called), the skip popped by
    output_blocks.i times rhos[i] in the concatenation; the context is the class embedding as one token."""
    m = net.model
    s4 = sigma.reshape(-1, 1, 1, 1)
    t = net.timestep(sigma).float()
    emb = m.time_embed(time_features(m.model_channels, t))
    context = net.cond_stage_model.embedding.weight[y][:, None, :]

    def run(block, h):
        for layer in block:
            if isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            elif hasattr(layer, "emb_layers"):
                h = layer(h, emb)
            else:
                h = layer(h)
        return h

    h = 1 / (s4**2 + 1).sqrt() * x
    hs = []
    for block in m.input_blocks:
        h = run(block, h)
        hs.append(h)
    h = run(m.middle_block, h)
    for i, block in enumerate(m.output_blocks):
        h = run(block, torch.cat([h, rhos[i] * hs.pop()], 1))
    return x - s4 * m.out(h)


@pytest.fixture(scope="module")
def net():
    return randomize(build_preset("ldm-imagenet256-tiny"), seed=3, scale=0.1)


def _inputs(n=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g), torch.tensor([0.05, 1.0, 12.0][:n]), torch.tensor([0, 4, 9][:n])


def test_sites_and_rules_against_a_hand_written_forward(net):
    sites = skip_sites(net)
    assert [s.name for s in sites] == [f"output_blocks.{i}" for i in range(12)]
    assert [s.resolution for s in sites] == [2] * 3 + [4] * 3 + [8] * 3 + [16] * 3
    x, s, y = _inputs()
    rhos = [0.6 + 0.05 * i for i in range(12)]
    with torch.no_grad():
        base = net(x, s, y)
        assert (base - reference_forward(net, x, s, y, [1.0] * 12)).abs().max() <= 1e-5
        for mode in ("concat", "residual", "norm"):
            with skip_tuning(net, "const:1", mode=mode):
                assert torch.equal(net(x, s, y), base), mode
        with skip_tuning(net, Sites(tuple(rhos))):
            tuned = net(x, s, y)
        ref = reference_forward(net, x, s, y, rhos)
    assert (tuned - ref).abs().max() <= 1e-5  # measured: 0.0 (outputs up to 56)
    assert (tuned - base).abs().max() > 1e-2
    assert not any(m._forward_pre_hooks for m in net.modules())


def test_guidance_with_the_null_class_and_the_latent_path(tiny_ckpt, tmp_path):
    ckpt, _ = tiny_ckpt
    tiny = load_model(ckpt)
    out = generate(tiny, "0-3", SamplingSpec("ddim", steps=4, grid="discrete", guidance=1.5), rule="layer:0.8")
    assert out.images.shape == (4, 3, 16, 16) and torch.isfinite(out.images).all()  # latents
    images = load_decoder(ckpt).decode(out.images)  # the checkpoint's own VQ first stage
    assert images.shape == (4, 3, 32, 32) and torch.isfinite(images).all()
    common = ["sample", "--model", str(ckpt), "--sampler", "ddim", "--steps", "3", "--grid", "discrete",
              "--seeds", "0-2", "--no-progress", "--no-pngs"]
    assert main([*common, "--out", str(tmp_path / "lat")]) == 0
    assert main([*common, "--vae", str(ckpt), "--out", str(tmp_path / "img")]) == 0
    latents = torch.from_numpy(np.load(tmp_path / "lat" / "latents.npz")["latents"])
    got = np.load(tmp_path / "img" / "images.npz")["images"]  # NHWC uint8
    from skiptune.experiment import to_uint8

    assert got.shape == (3, 32, 32, 3)
    assert np.array_equal(got, to_uint8(load_decoder(ckpt).decode(latents)).permute(0, 2, 3, 1).numpy())


def test_info_lists_the_sites(capsys):
    # the full preset's sites: test_full_cin256_v2_names_shapes_and_sites (describe, what info prints, on meta)
    assert main(["info", "--arch", "ldm-imagenet256-tiny", "--json", "--rule", "layer:0.5"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["precond"] == "LDMPrecond" and len(info["sites"]) == 12
    assert [s["rho"] for s in info["sites"]][::11] == [0.5, 1.0]


# --- analyses on the family ---------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["adm-guided-imagenet64-tiny", "cd-imagenet64-tiny", "ldm-imagenet256-tiny"])
def test_norms_and_complexity_run_on_the_openai_family(preset):
    tiny = randomize(build_preset(preset), seed=2, scale=0.1)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.tensor([0, 4, 9])
    base = run_norms(tiny, images, NormsConfig(sigmas="0.5,3"), labels=labels)
    half = run_norms(tiny, images, NormsConfig(sigmas="0.5,3", rule="const:0.5"), labels=labels)
    b = {(r["site"], r["sigma"]): r["prop"] for r in base.rows}
    h = {(r["site"], r["sigma"]): r["prop"] for r in half.rows}
    k = len(skip_sites(tiny))
    assert base.summary["num_sites"] == k and all(math.isfinite(v) and v > 0 for v in b.values())
    # the innermost decoder tensor u_0 comes before any join, so a rule changes only d_0 there
    assert h[(0, 0.5)] == pytest.approx(0.5 * b[(0, 0.5)], rel=1e-5)
    res = run_complexity(tiny, images[:2], ComplexityConfig(rules="none;const:0.8", sigmas="1",
                                                                         estimator="hutchinson", probes=4),
                         labels=labels[:2])
    rows = {r["rule"]: r for r in res.rows}
    assert rows["none"]["ratio_to_baseline"] == 1.0 and math.isfinite(rows["const:0.8"]["frobenius"])
    assert rows["const:0.8"]["frobenius"] != rows["none"]["frobenius"]
