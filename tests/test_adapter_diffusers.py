"""diffusers UNet2DModel / UNet2DConditionModel: sites, exactness, sigma, pipelines, loading and the CLI."""

import json
import math
import sys
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler  # noqa: E402

from diffusers_models import (  # noqa: E402
    reference_forward,
    run,
    tiny_unet2d,
    tiny_unet2d_cond,
    unet_inputs,
)
from skiptune.adapters.diffusers import attach_schedule, sigma_at_timestep  # noqa: E402
from skiptune.cli import main  # noqa: E402
from skiptune.io import load_model  # noqa: E402
from skiptune.io.diffusers import DiffusersDenoiser  # noqa: E402
from skiptune.io.edm_pickle import CheckpointError  # noqa: E402
from skiptune.sampling import sample  # noqa: E402
from skiptune.skip import Rule, Sites, current_sigma, publish_sigma, skip_sites, skip_tuning  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["UNet2DModel", "UNet2DConditionModel"])
def unet(request):
    return tiny_unet2d() if request.param == "UNet2DModel" else tiny_unet2d_cond()


def no_hooks(module) -> bool:
    return not any(m._forward_pre_hooks or m._forward_hooks for m in module.modules())


def linear_abar(T=1000, b0=1e-4, b1=0.02):
    """DDPM: abar_t = prod_{s<=t} (1 - beta_s), betas linear in [b0, b1] (float64, numpy)."""
    return np.cumprod(1 - np.linspace(b0, b1, T))


def test_sites_follow_the_pop_order():
    # UNet2DModel, blocks (8, 16), 1 layer: the encoder pushes conv_in (8 ch, 8x8), down0.resnet (8, 8x8),
    # down0.downsample (8, 4x4), down1.resnet (16, 4x4); the decoder pops them in reverse, carrying 16 channels
    # (mid block) into up0, whose resnets output 16, then 8 in up1.
    want = [("up_blocks.0.resnets.0", 4, 16, 16), ("up_blocks.0.resnets.1", 4, 8, 16),
            ("up_blocks.1.resnets.0", 8, 8, 16), ("up_blocks.1.resnets.1", 8, 8, 8)]
    net = tiny_unet2d()
    assert [(s.name, s.resolution, s.skip_channels, s.main_channels) for s in skip_sites(net)] == want
    for s in skip_sites(net):
        assert net.get_submodule(s.name).in_channels == s.skip_channels + s.main_channels


@pytest.mark.parametrize("builder, layers, mid, levels", [
    (tiny_unet2d, 1, True, 2), (tiny_unet2d, 2, True, 2), (tiny_unet2d, 1, False, 2),
    (tiny_unet2d_cond, 1, True, 2), (tiny_unet2d_cond, 1, True, 3), (tiny_unet2d_cond, 1, False, 2),
])
def test_site_counts(builder, layers, mid, levels):
    # n levels of L resnets: 1 (conv_in) + n L (resnets) + (n - 1) (downsamplers) = n (L + 1) residuals,
    # and n up blocks of L + 1 resnets pop them all
    net = builder(layers=layers, mid=mid) if builder is tiny_unet2d else builder(levels=levels, mid=mid)
    sites = skip_sites(net)
    assert len(sites) == levels * (layers + 1)
    assert [s.index for s in sites] == list(range(len(sites)))
    assert [s.resolution for s in sites] == sorted(s.resolution for s in sites)  # innermost first


def test_all_ones_rule_is_bit_identical(unet):
    x, t, c = unet_inputs(unet)
    with torch.no_grad():
        base = run(unet, x, t, c)
        k = len(skip_sites(unet))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the default-schedule warning of the sigma-dependent rules
            for rule in ("none", "layer:1", "const:1", Sites((1.0,) * k), "ramp:down:1", "window:0:1e9:const:1"):
                for mode in ("concat", "residual", "norm"):
                    with skip_tuning(unet, rule, mode=mode):
                        assert torch.equal(run(unet, x, t, c), base), (rule, mode)
    assert no_hooks(unet)


@pytest.mark.parametrize("site_frac", [0.0, 0.5, 1.0])
def test_one_site_matches_hand_written_forward(unet, site_frac):
    x, t, c = unet_inputs(unet)
    k = len(skip_sites(unet))
    i = round(site_frac * (k - 1))
    values = [1.0] * k
    values[i] = 0.37
    with torch.no_grad():
        with skip_tuning(unet, Sites(tuple(values))):
            got = run(unet, x, t, c)
        want = reference_forward(unet, x, t, c, i, 0.37)
        base = run(unet, x, t, c)
        plain = reference_forward(unet, x, t, c, -1, 1.0)
    torch.testing.assert_close(plain, base, rtol=1e-5, atol=1e-6)  # the reference is the UNet's own forward
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (got - base).abs().max() > 1e-3, "scaling one skip must change the output"


def test_detach_restores_and_exceptions_clean_up(unet):
    x, t, c = unet_inputs(unet)
    with torch.no_grad():
        base = run(unet, x, t, c)
        handle = skip_tuning(unet, "layer:0.6")
        assert not torch.allclose(run(unet, x, t, c), base)
        handle.remove()
        handle.remove()
        assert torch.equal(run(unet, x, t, c), base) and no_hooks(unet)
        with pytest.raises(KeyError):
            with skip_tuning(unet, "ramp:up:0.5", mode="norm"):
                raise KeyError("boom")
        assert no_hooks(unet) and torch.equal(run(unet, x, t, c), base)


def test_modes_scale_the_right_tensor(unet):
    """concat scales the skip channels of the resnet input (so of everything the resnet feeds them to);
    residual only those entering conv_shortcut; norm only those entering norm1. Main channels never change."""
    x, t, c = unet_inputs(unet)
    site = skip_sites(unet)[1]
    resnet = unet.get_submodule(site.name)
    targets = {"input": resnet, "shortcut": resnet.conv_shortcut, "norm1": resnet.norm1}
    scaled = {"concat": {"input", "shortcut", "norm1"}, "residual": {"shortcut"}, "norm": {"norm1"}}
    values = [1.0] * len(skip_sites(unet))
    values[1] = 0.25

    def captured():
        seen = {}
        handles = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.update({n: args[0].clone()}))
                   for n, m in targets.items()]
        run(unet, x, t, c)
        for h in handles:
            h.remove()
        return seen

    with torch.no_grad():
        plain = captured()
        for mode, which in scaled.items():
            with skip_tuning(unet, Sites(tuple(values)), mode=mode):
                seen = captured()  # registered after the rule's hooks, so they see their effect
            for name in targets:
                want = plain[name].clone()
                if name in which:
                    want[:, site.main_channels:] *= 0.25
                assert torch.equal(seen[name], want), (mode, name)
    assert no_hooks(unet)


class Recorder(Rule):
    """Records the sigma it is evaluated at and returns 1."""

    sigma_dependent = True

    def __init__(self):
        self.seen = []

    def factor(self, i, k, sigma):
        self.seen.append(sigma)
        return 1.0

    def __str__(self):
        return "recorder"


def as_list(sigma):
    return torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).tolist()


def test_timestep_to_sigma_with_an_attached_schedule():
    net = tiny_unet2d()
    x, _, c = unet_inputs(net)
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    attach_schedule(net, sched)
    abar = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)  # scaled_linear betas
    sig = np.sqrt(1 / abar - 1)
    rec = Recorder()
    with torch.no_grad(), skip_tuning(net, rec):
        run(net, x, torch.tensor([10, 600]), c)  # per-sample timesteps -> per-sample sigma
        assert as_list(rec.seen[0]) == pytest.approx([sig[10], sig[600]], rel=1e-12)
        rec.seen.clear()
        run(net, x, 250, c)  # a python int for the whole batch
        assert as_list(rec.seen[0]) == pytest.approx([sig[250]], rel=1e-12)
        rec.seen.clear()
        with publish_sigma(7.0):  # a caller-published sigma wins: nothing is published twice
            run(net, x, 250, c)
        assert all(as_list(s) == [7.0] for s in rec.seen)
        with pytest.raises(RuntimeError):  # 2 channels instead of 3: conv_in fails inside the UNet
            run(net, x[:, :2], 250, c)
        assert current_sigma() is None  # the published sigma was withdrawn all the same
    # fractional timesteps interpolate log sigma
    assert as_list(sigma_at_timestep(torch.as_tensor(abar), 10.5)) == pytest.approx([math.sqrt(sig[10] * sig[11])])
    assert no_hooks(net)


def test_default_schedule_is_ddpm_linear_with_a_warning():
    net = tiny_unet2d()
    x, _, c = unet_inputs(net)
    sig = np.sqrt(1 / linear_abar() - 1)
    rec = Recorder()
    with torch.no_grad(), skip_tuning(net, rec):
        with pytest.warns(UserWarning, match="no noise schedule attached"):
            run(net, x, 999, c)
    assert as_list(rec.seen[0]) == pytest.approx([sig[999]], rel=1e-12)
    with torch.no_grad(), skip_tuning(net, "layer:0.5"):  # sigma-free rules need no schedule, and warn nothing
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run(net, x, 999, c)


def test_fourier_time_features_receive_sigma_itself():
    net = tiny_unet2d(time_embedding_type="fourier")  # score-SDE VE UNets are called with sigma as the timestep
    x, _, c = unet_inputs(net)
    rec = Recorder()
    with torch.no_grad(), skip_tuning(net, rec):
        run(net, x, torch.tensor([0.5, 20.0]), c)
    assert as_list(rec.seen[0]) == [0.5, 20.0]


def test_denoiser_publishes_the_sampler_sigma():
    net = tiny_unet2d()
    den = DiffusersDenoiser(net, torch.as_tensor(linear_abar()))
    rec = Recorder()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), skip_tuning(den, rec):
        den(x, torch.tensor([0.5, 3.3]))  # between trained levels: the rule sees the sampler's own sigma
    assert as_list(rec.seen[0]) == pytest.approx([0.5, 3.3])


def make_pipeline(kind, unet):
    pipe = (DDPMPipeline if kind == "ddpm" else DDIMPipeline)(unet=unet, scheduler=(
        DDPMScheduler() if kind == "ddpm" else DDIMScheduler()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_inside_a_diffusers_pipeline(kind):
    pipe = make_pipeline(kind, tiny_unet2d())

    def images():
        return pipe(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images

    base = images()
    attach_schedule(pipe.unet, pipe.scheduler)
    for rule in ("layer:1", "ramp:down:1"):
        with skip_tuning(pipe.unet, rule):
            assert np.array_equal(images(), base), rule
    for rule in ("layer:0.5", "ramp:down:0.5"):
        with skip_tuning(pipe.unet, rule):
            assert np.abs(images() - base).max() > 1e-3, rule
    assert no_hooks(pipe.unet)
    assert np.array_equal(images(), base)


def test_our_ddim_through_the_vp_wrapper_matches_diffusers_ddim():
    """DDIM (eta = 0) in sigma space, x_next = x0 + sigma_next (x - x0)/sigma, is diffusers' DDIMScheduler step
    on x_vp = x / sqrt(1 + sigma^2) (REFERENCE.md Sec. 2), so both give the same sample from the same noise."""
    net = tiny_unet2d()
    sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(4)
    x_vp = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = x_vp.clone()
        for t in sched.timesteps:
            z = sched.step(net(z, t).sample, t, z).prev_sample
        abar = torch.as_tensor(linear_abar())
        den = DiffusersDenoiser(net, abar)
        sig = den.sigmas[sched.timesteps.long()]
        sigmas = torch.cat([sig, sig.new_zeros(1)])
        ours = sample("ddim", den, x_vp.double() * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    torch.testing.assert_close(ours.float(), z, rtol=1e-4, atol=1e-4)


def test_loading_and_cli(tmp_path, capsys):
    pipe = make_pipeline("ddpm", tiny_unet2d())
    pipe.save_pretrained(tmp_path / "pipe")
    pipe.unet.save_pretrained(tmp_path / "bare")
    den = load_model(tmp_path / "pipe")
    assert isinstance(den, DiffusersDenoiser) and den.img_resolution == 8 and den.label_dim == 0
    torch.testing.assert_close(den.alphas_cumprod, pipe.scheduler.alphas_cumprod.double(), rtol=1e-6, atol=0)
    with torch.no_grad():  # the loaded weights are the saved ones
        x, t, _ = unet_inputs(pipe.unet)
        assert torch.equal(den.model(x, t).sample, pipe.unet(x, t).sample)

    for folder in ("pipe", "bare", "pipe/unet"):
        assert main(["info", "--model", str(tmp_path / folder), "--json", "--rule", "layer:0.5"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["architecture"] == "UNet2DModel" and info["precond"] == "DiffusersDenoiser"
        assert [s["stage"] for s in info["sites"]] == [0, 0, 1, 1]
        assert [s["rho"] for s in info["sites"]] == pytest.approx([0.5, 0.5 + 0.5 / 3, 0.5 + 1 / 3, 1.0])

    tiny_unet2d_cond().save_pretrained(tmp_path / "cond")
    assert main(["info", "--model", str(tmp_path / "cond"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "UNet2DConditionModel"
    assert main(["sample", "--model", str(tmp_path / "cond"), "--nfe", "1", "--sampler", "euler", "--seeds", "0",
                 "--out", str(tmp_path / "cond-out"), "--no-progress"]) == 2
    assert "needs encoder_hidden_states" in capsys.readouterr().err

    # a latent pipeline (an autoencoder folder beside the UNet) samples latents, with the VAE's scale recorded
    (tmp_path / "pipe" / "vae").mkdir()
    (tmp_path / "pipe" / "vae" / "config.json").write_text(json.dumps({"scaling_factor": 0.18215}))
    assert load_model(tmp_path / "pipe").latent_scale_factor == 0.18215

    tiny_unet2d(time_embedding_type="fourier").save_pretrained(tmp_path / "ve")
    with pytest.raises(CheckpointError, match="score-SDE VE"):
        load_model(tmp_path / "ve")

    out = tmp_path / "out"
    (tmp_path / "pipe" / "vae" / "config.json").unlink()
    (tmp_path / "pipe" / "vae").rmdir()
    assert main(["sample", "--model", str(tmp_path / "pipe"), "--sampler", "ddim", "--nfe", "3", "--seeds", "0-1",
                 "--rule", "layer:0.8", "--freeu", "b1=1.1,b2=1.2,s1=0.9,s2=0", "--out", str(out),
                 "--no-pngs", "--no-progress"]) == 0
    capsys.readouterr()
    assert np.load(out / "images.npz")["images"].shape[0] == 2
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["rule"] == "layer:0.8:1" and config["freeu"] == "b1=1.1,b2=1.2,s1=0.9,s2=0"


def test_without_diffusers_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    tiny_unet2d().save_pretrained(tmp_path / "bare")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(CheckpointError, match=r"pip install 'skiptune\[diffusers\]'"):
        load_model(tmp_path / "bare")
    assert main(["info", "--model", str(tmp_path / "bare")]) == 2
    assert "skiptune[diffusers]" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="not a diffusers model or pipeline folder"):
        load_model(tmp_path)
