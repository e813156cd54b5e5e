"""S²-DM: the skip-step loss, the discrete DDPM network it trains, and training with it."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import randomize
from skiptune.experiment.generate import SamplingSpec, generate
from skiptune.io import load_model, open_model
from skiptune.nets import build_network
from skiptune.sampling import VPDenoiser, alphas_cumprod, discrete_sigmas, discrete_timesteps
from skiptune.train import (
    TrainConfig,
    alpha_skip,
    antithetic_timesteps,
    ddpm_loss,
    ddpmpp_kwargs,
    load_dataset,
    resolve_network,
    s2dm_loss,
    train,
)

TINY = dict(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=())
# The DDPM schedule written out independently of the library: betas linear in [1e-4, 0.02], T = 1000.
BETAS = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
ABAR_NP = np.cumprod(1 - BETAS)
ABAR = torch.from_numpy(ABAR_NP)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_ddpm_net(seed: int = 0, resolution: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(build_network("DDPMPrecond", ddpmpp_kwargs(resolution, 1, 0, **TINY)), seed).eval()


# ----------------------------------------------------------------------------------------------- the loss


def test_schedule_and_the_skip_span_convention():
    assert torch.allclose(alphas_cumprod(1000, "linear"), ABAR, rtol=1e-13, atol=0)
    assert torch.equal(tiny_ddpm_net().alphas_cumprod, alphas_cumprod(1000, "linear"))
    # skip span k: alpha_skip = abar_t / abar_(t-k) is the product of exactly k factors (1 - beta_s), s = t-k+1..t
    for t, k in [(999, 10), (10, 10), (500, 1), (300, 9), (700, 49)]:
        want = math.prod(1 - BETAS[s] for s in range(t - k + 1, t + 1))
        got = float(alpha_skip(ABAR, torch.tensor([t]), k)[0])
        assert math.isclose(got, want, rel_tol=1e-12), (t, k)
    with pytest.raises(ValueError, match="skip_span must be an integer in 1..999"):
        alpha_skip(ABAR, torch.tensor([5]), 0)
    with pytest.raises(ValueError, match="skip_span must be an integer in 1..999"):
        alpha_skip(ABAR, torch.tensor([5]), 1000)


def test_antithetic_timesteps_come_in_mirrored_pairs():
    g = torch.Generator().manual_seed(3)
    t = antithetic_timesteps(9, 1000, g)
    assert t.dtype == torch.int64 and t.shape == (9,)
    assert torch.equal(t[5:], 999 - t[:4])  # n // 2 + 1 = 5 draws, then the first 4 mirrored
    assert int(t.min()) >= 0 and int(t.max()) <= 999


def _eps_model(x_t, t):
    """A fixed, non-trivial eps model: eps_hat = 0.5 x_t + 0.001 t."""
    return 0.5 * x_t + 0.001 * t.to(x_t.dtype).reshape(-1, 1, 1, 1)


def test_loss_equals_a_hand_computation_on_fixed_tensors():
    x0 = torch.tensor([[[[0.5, -1.0], [0.25, 0.0]]], [[[1.0, 0.75], [-0.5, -0.25]]], [[[0.0, 0.1], [-0.9, 0.3]]]],
                      dtype=torch.float64)
    e1 = torch.tensor([[[[0.3, -0.2], [1.1, -0.7]]], [[[-1.5, 0.4], [0.2, 0.9]]], [[[0.6, -0.6], [0.05, 1.3]]]],
                      dtype=torch.float64)
    e2 = torch.tensor([[[[-0.4, 0.8], [0.1, -1.2]]], [[[0.7, -0.3], [1.4, -0.1]]], [[[-0.2, 0.5], [0.9, -0.8]]]],
                      dtype=torch.float64)
    t = torch.tensor([3, 5, 700])  # k = 5: image 0 falls back to L0, image 1 is the boundary t = k (abar_0)
    k, tau = 5, 0.9
    want_l0, want = [], []
    for i in range(3):
        a = ABAR_NP[int(t[i])]
        xs, n1, n2 = x0[i].flatten().tolist(), e1[i].flatten().tolist(), e2[i].flatten().tolist()
        eh = [0.5 * (math.sqrt(a) * x + math.sqrt(1 - a) * n) + 0.001 * int(t[i]) for x, n in zip(xs, n1, strict=True)]
        l0 = sum((n - h) ** 2 for n, h in zip(n1, eh, strict=True)) / 4
        want_l0.append(l0)
        if int(t[i]) < k:
            want.append(l0)
            continue
        a_skip = a / ABAR_NP[int(t[i]) - k]
        c = math.sqrt((1 - a_skip) / a_skip)
        l_skip = sum((n - c * h) ** 2 for n, h in zip(n2, eh, strict=True)) / 4
        want.append(tau * l0 + (1 - tau) * l_skip)
    got = s2dm_loss(_eps_model, x0, t, e1, e2, ABAR, skip_span=k, tau=tau)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-13, atol=0)
    torch.testing.assert_close(ddpm_loss(_eps_model, x0, t, e1, ABAR), torch.tensor(want_l0, dtype=torch.float64),
                               rtol=1e-13, atol=0)
    assert want[0] == want_l0[0] and want[1] != want_l0[1]


def test_below_the_skip_span_the_loss_is_l0_alone():
    g = torch.Generator().manual_seed(0)
    x0, e1, e2 = (torch.randn(4, 1, 3, 3, generator=g) for _ in range(3))
    t = torch.tensor([0, 3, 9, 10])
    k = 10
    base = ddpm_loss(_eps_model, x0, t, e1, ABAR)
    for tau in (0.0, 0.5, 0.99):
        loss = s2dm_loss(_eps_model, x0, t, e1, e2, ABAR, k, tau)
        assert torch.equal(loss[:3], base[:3])  # t < k: exactly L0, whatever tau
        other = s2dm_loss(_eps_model, x0, t, e1, -3 * e2, ABAR, k, tau)
        assert torch.equal(other[:3], loss[:3])  # ... and e2 plays no part
        if tau < 1:
            assert other[3] != loss[3]  # at t = k it does


def test_tau_one_equals_the_ddpm_loss_exactly():
    net = tiny_ddpm_net()
    g = torch.Generator().manual_seed(1)
    x0, e1, e2 = (torch.randn(6, 1, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([0, 5, 9, 10, 400, 999])
    losses, grads = [], []
    for fn in (lambda: ddpm_loss(net.eps, x0, t, e1, net.alphas_cumprod),
               lambda: s2dm_loss(net.eps, x0, t, e1, e2, net.alphas_cumprod, 10, tau=1.0)):
        net.zero_grad(set_to_none=True)
        loss = fn()
        loss.mean().backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    assert torch.equal(losses[0], losses[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_expected_gradient_of_l_skip_by_monte_carlo():
    """E_e2[grad L_skip] = grad of ((1 - alpha_skip)/alpha_skip) mean(eps_hat^2), per image, averaged."""
    torch.manual_seed(0)
    model = nn.Linear(6, 6).double()
    with torch.no_grad():
        model.bias.add_(3.0)  # a large eps_hat makes the penalty's gradient large against the MC noise
    eps_model = lambda x_t, t: model(x_t.reshape(x_t.shape[0], -1)).reshape(x_t.shape)  # noqa: E731
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(4, 1, 2, 3, generator=g, dtype=torch.float64)
    e1 = torch.randn(4, 1, 2, 3, generator=g, dtype=torch.float64)
    t, k = torch.tensor([999, 700, 300, 40]), 10
    params = list(model.parameters())

    def flat_grad(value):
        return torch.cat([d.reshape(-1) for d in torch.autograd.grad(value, params)])

    draws = 2000
    samples = torch.stack([flat_grad(s2dm_loss(eps_model, x0, t, e1, torch.randn(x0.shape, generator=g,
                                                                                  dtype=torch.float64),
                                               ABAR, k, tau=0.0).mean()) for _ in range(draws)])
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(draws)

    def penalty_grad(weight):
        a_skip = alpha_skip(ABAR, t, k)
        a = ABAR[t].reshape(-1, 1, 1, 1)
        pred = eps_model(a.sqrt() * x0 + (1 - a).sqrt() * e1, t)
        return flat_grad((weight(a_skip) * pred.pow(2).reshape(4, -1).mean(1)).mean())

    want = penalty_grad(lambda a: (1 - a) / a)
    z = ((mean - want) / se).abs()
    assert float(z.max()) < 5, float(z.max())  # every one of the 42 components within 5 standard errors
    wrong = penalty_grad(lambda a: 1 - a)  # the same penalty without the 1/alpha_skip: clearly rejected
    assert float(((mean - wrong) / se).abs().max()) > 10


# ---------------------------------------------------------------------------------------- the discrete net


class RawEps(nn.Module):
    """The bare UNet as a diffusers-style eps model ``model(x_vp, t)`` (integer t given as a float label)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x_vp, t):
        return self.unet(x_vp.float(), t.float())


def test_ddpm_network_is_the_discrete_vp_denoiser_and_takes_skip_tuning():
    net = tiny_ddpm_net()
    abar = net.alphas_cumprod
    ts = torch.tensor([999, 600, 250, 37, 0])
    sig = discrete_sigmas(abar, ts, append_zero=False)
    reference = VPDenoiser(RawEps(net.model), abar, prediction="eps")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64) * sig.reshape(-1, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(x, sig).double(), reference(x, sig), rtol=1e-4, atol=1e-4 * float(sig.max()))
        # between two trained levels the network sees the nearest timestep (in log sigma), like VPDenoiser
        lo, hi = net.sigmas[250].log(), net.sigmas[251].log()
        mid = torch.stack([0.7 * lo + 0.3 * hi, 0.3 * lo + 0.7 * hi]).exp()
        assert net.timestep(mid).tolist() == [250, 251] == reference.sigma_to_t(mid).tolist()
        # eps() at integer timesteps is the network's eps: D = x - sigma eps(x / sqrt(1 + sigma^2), t)
        x_t = x / (1 + sig.reshape(-1, 1, 1, 1) ** 2).sqrt()
        d = x - sig.reshape(-1, 1, 1, 1) * net.eps(x_t.float(), ts).double()
        torch.testing.assert_close(net(x, sig).double(), d, rtol=1e-4, atol=1e-4 * float(sig.max()))
    assert net.sigma_min == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)), rel=1e-9)
    # the discrete grid is DDIM's uniform skip: timesteps 900, 800, ..., 0 for 10 steps, then sigma = 0
    grid = SamplingSpec("ddim", steps=10, grid="discrete").sigmas(net)
    assert torch.equal(grid, discrete_sigmas(abar, discrete_timesteps(1000, 10)))
    assert net.timestep(grid[:-1].float()).tolist() == list(range(900, -1, -100))
    none = generate(net, "0-3", SamplingSpec("ddim", steps=10, grid="discrete"))
    ones = generate(net, "0-3", SamplingSpec("ddim", steps=10, grid="discrete"), rule="layer:1")
    tuned = generate(net, "0-3", SamplingSpec("ddim", steps=10, grid="discrete"), rule="layer:0.6")
    assert torch.equal(none.images, ones.images) and not torch.allclose(none.images, tuned.images)
    with pytest.raises(ValueError, match="needs a discrete-time network"):
        SamplingSpec("ddim", steps=10, grid="discrete").sigmas(load_model("ddpmpp-tiny"))


# ---------------------------------------------------------------------------------------------- training


def test_config_validation_names_the_problem():
    data = load_dataset("digits", split="test", resolution=8)
    cases = [(dict(objective="ddim"), "objective must be one of edm, ddpm, s2dm"),
             (dict(objective="s2dm", tau=1.5), "tau must be in [0, 1]"),
             (dict(objective="s2dm", skip_span=0), "skip_span must be an integer >= 1"),
             (dict(objective="s2dm", skip_span=2.5), "skip_span must be an integer >= 1")]
    for over, message in cases:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            TrainConfig(steps=1, **over).validate()
    with pytest.raises(ValueError, match="in 1..999"):
        resolve_network(TrainConfig(steps=1, objective="s2dm", skip_span=1000, **TINY), data)
    with pytest.raises(ValueError, match="not EDMPrecond: set class_name to DDPMPrecond"):
        resolve_network(TrainConfig(steps=1, objective="ddpm", net={"class_name": "EDMPrecond", "kwargs": {}}), data)
    with pytest.raises(ValueError, match=r"\['sigma_data'\] belong to EDMPrecond"):
        resolve_network(TrainConfig(steps=1, objective="ddpm", net={"sigma_data": 0.5, **ddpmpp_kwargs(8, 1)}), data)
    with pytest.raises(ValueError, match="objective ddpm or s2dm"):
        resolve_network(TrainConfig(steps=1, net={"class_name": "DDPMPrecond", "kwargs": ddpmpp_kwargs(8, 1)}), data)
    name, kwargs = resolve_network(TrainConfig(steps=1, objective="s2dm", arch="ddpmpp-tiny"),
                                   load_dataset("digits", split="test"))
    assert name == "DDPMPrecond" and kwargs["img_channels"] == 1 and kwargs["model_channels"] == 16


def test_tiny_s2dm_run_decreases_the_loss(tmp_path):
    data = load_dataset("digits", resolution=8)
    config = TrainConfig(out=str(tmp_path / "run"), batch=16, steps=30, lr=3e-3, lr_warmup_images=160, grad_clip=1.0,
                         save_every=None, progress=False, objective="s2dm", skip_span=10, tau=0.99, **TINY)
    result = train(config, data=data)
    losses = np.array(result.losses)
    first, last = losses[:10], losses[-10:]
    se = math.sqrt(first.var(ddof=1) / len(first) + last.var(ddof=1) / len(last))
    assert first.mean() - last.mean() > 3 * se, (first.mean(), last.mean(), se)  # one-sided z-test, p ~ 0.001
    loaded = open_model(result.network)
    assert type(loaded.net).__name__ == "DDPMPrecond" and loaded.extra["objective"] == "s2dm"
    assert loaded.extra["train_config"]["skip_span"] == 10


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_s2dm_resumes_bit_exactly_and_tau_one_trains_like_ddpm(tmp_path):
    data = load_dataset("digits", split="test", resolution=8)
    common = dict(batch=8, steps=6, lr=2e-3, lr_warmup_images=16, save_every=3, log_every=1, progress=False,
                  grad_clip=1.0, ema_halflife_images=40, cond=True, label_dropout=0.2, **{**TINY, "dropout": 0.1})
    full = train(TrainConfig(out=str(tmp_path / "full"), objective="s2dm", skip_span=10, **common), data=data)

    class Killed(Exception):
        pass

    def kill_at_5(info):
        if info.step == 5:
            raise Killed  # the state on disk is from step 3: steps 4-5 are replayed

    part = TrainConfig(out=str(tmp_path / "part"), objective="s2dm", skip_span=10, **common)
    with pytest.raises(Killed):
        train(part, data=data, callback=kill_at_5)
    with pytest.raises(ValueError, match="differs in skip_span"):
        train(TrainConfig(**{**part.to_dict(), "skip_span": 5}), resume=True, data=data)
    resumed = train(part, resume=True, data=data)
    assert resumed.start_step == 3 and resumed.losses == full.losses[3:]
    a = torch.load(tmp_path / "full/training-state.pt", weights_only=True)
    b = torch.load(tmp_path / "part/training-state.pt", weights_only=True)
    assert _same_tensors(a["net"], b["net"]) and _same_tensors(a["ema"], b["ema"])
    assert _same_tensors(load_file(tmp_path / "full/network.safetensors"),
                         load_file(tmp_path / "part/network.safetensors"))
    log = [json.loads(line)["step"] for line in (tmp_path / "part/train-log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 7))

    # Same seed: DDPM and S²-DM with tau = 1 draw the same batches, timesteps and noise, so they train identically.
    short = {**common, "steps": 3, "save_every": None}
    ddpm = train(TrainConfig(out=str(tmp_path / "ddpm"), objective="ddpm", **short), data=data)
    tau1 = train(TrainConfig(out=str(tmp_path / "tau1"), objective="s2dm", tau=1.0, **short), data=data)
    assert ddpm.losses == tau1.losses
    assert _same_tensors(load_file(ddpm.network), load_file(tau1.network))


def test_train_command_objective_options(tmp_path, capsys):
    from skiptune.cli import main

    base = ["train", "--data", "digits", "--resolution", "8", "--model-channels", "8", "--channel-mult", "1,2",
            "--num-blocks", "1", "--attn", "none", "--batch", "4", "--steps", "1", "--no-progress"]
    assert main([*base, "--objective", "ddpm", "--skip-span", "5", "--out", str(tmp_path / "x")]) == 2
    assert "--skip-span only apply to --objective s2dm" in capsys.readouterr().err
    assert main([*base, "--objective", "s2dm", "--tau", "2", "--out", str(tmp_path / "x")]) == 2
    assert "tau must be in [0, 1]" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main([*base, "--objective", "s2dm", "--skip-span", "9", "--tau", "0.95", "--out", str(out)]) == 0
    train_cfg = json.loads((out / "config.json").read_text())["train"]
    assert (train_cfg["objective"], train_cfg["skip_span"], train_cfg["tau"]) == ("s2dm", 9, 0.95)
    assert train_cfg["grad_clip"] == 1.0  # the DDPM recipe's clipping is the default for ddpm/s2dm
    assert json.loads((out / "network.json").read_text())["class_name"] == "DDPMPrecond"
