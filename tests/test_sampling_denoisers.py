"""Denoiser wrappers: VP eps/v models, EDM-preconditioned nets, classifier-free guidance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from skiptune.core.sigma import current_sigma
from skiptune.sampling import (
    CFGDenoiser,
    EDMDenoiser,
    GaussianMixture,
    SeedNoise,
    VPDenoiser,
    alphas_cumprod,
    discrete_sigmas,
    discrete_timesteps,
    sample_dpmpp_2m,
    sample_heun,
)

pytestmark = pytest.mark.usefixtures("one_thread")


MIX = GaussianMixture([0.5, 0.5], [[-1.0, 0.5], [1.0, -0.5]], [0.4, 0.6])
ABAR = alphas_cumprod(1000, "linear")
SIG_TABLE = ((1 - ABAR) / ABAR).sqrt()  # sigma_t = sqrt(1/abar_t - 1), derived independently here


def table_sigma(t: torch.Tensor) -> torch.Tensor:
    """sigma at (possibly fractional) timesteps: log-linear interpolation of the table (numpy)."""
    t = t.detach().to(torch.float64).numpy()
    return torch.from_numpy(np.exp(np.interp(t, np.arange(1000), np.log(SIG_TABLE.numpy()))))


class OracleVPModel(nn.Module):
    """The exact eps- (or v-) prediction network of MIX in the discrete VP parametrisation."""

    def __init__(self, prediction: str):
        super().__init__()
        self.prediction = prediction
        self.w = nn.Parameter(torch.ones((), dtype=torch.float64))  # sets the model dtype
        self.published: list[torch.Tensor | None] = []

    def forward(self, x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.published.append(current_sigma())
        s = table_sigma(t)[:, None]
        alpha = 1 / torch.sqrt(1 + s**2)
        x = x_vp / alpha  # back to the VE variable x = x_vp sqrt(1 + sigma^2)
        d = MIX(x, s.reshape(-1))
        eps = (x - d) / s
        if self.prediction == "eps":
            return eps * self.w
        return (alpha * eps - s * alpha * d) * self.w  # v = alpha_vp eps - sigma_vp x0


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_vp_wrapper_reproduces_oracle_on_trained_sigmas(prediction):
    den = VPDenoiser(OracleVPModel(prediction), ABAR, prediction=prediction)
    x = SeedNoise(range(6), dtype=torch.float64).randn([2]) * 3
    idx = torch.tensor([0, 1, 17, 250, 731, 999])
    sigma = SIG_TABLE[idx]
    x = x * sigma[:, None]
    assert torch.allclose(den(x, sigma), MIX(x, sigma), rtol=1e-12, atol=1e-12)
    assert den.sigma_min == pytest.approx(float(SIG_TABLE[0])) and den.sigma_max == pytest.approx(float(SIG_TABLE[-1]))


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_vp_wrapper_interp_reproduces_oracle_anywhere(prediction):
    den = VPDenoiser(OracleVPModel(prediction), ABAR, prediction=prediction, timesteps="interp")
    sigma = torch.tensor([0.013, 0.2, 1.0, 7.7, 80.0, 150.0], dtype=torch.float64)
    x = SeedNoise(range(6), dtype=torch.float64).randn([2]) * sigma[:, None]
    assert torch.allclose(den(x, sigma), MIX(x, sigma), rtol=1e-10, atol=1e-10)


def test_vp_wrapper_nearest_timestep_and_sigma_publication():
    model = OracleVPModel("eps")
    den = VPDenoiser(model, ABAR)
    sigma = torch.tensor([0.05, 3.3, 40.0], dtype=torch.float64)
    t = den.sigma_to_t(sigma)
    brute = (sigma.log()[:, None] - SIG_TABLE.log()[None]).abs().argmin(1)
    assert t.dtype == torch.int64 and torch.equal(t, brute)
    x = SeedNoise(range(3), dtype=torch.float64).randn([2]) * sigma[:, None]
    out = den(x, sigma)
    s_t = SIG_TABLE[t]  # the network sees t_nearest, the conversion uses the sampler's sigma
    x_vp = x / torch.sqrt(1 + sigma[:, None] ** 2)
    eps = (x_vp / (1 / torch.sqrt(1 + s_t[:, None] ** 2)) - MIX(x_vp * torch.sqrt(1 + s_t[:, None] ** 2), s_t)) / s_t[
        :, None
    ]
    assert torch.allclose(out, x - sigma[:, None] * eps, rtol=1e-12, atol=1e-12)
    assert torch.equal(model.published[-1], sigma)
    assert torch.equal(den.round_sigma(sigma), SIG_TABLE[brute])


def test_vp_wrapper_sampling_on_discrete_grid_matches_oracle():
    """On a grid of trained sigmas the wrapped eps-model samples exactly like the oracle."""
    den = VPDenoiser(OracleVPModel("eps"), ABAR)
    sigmas = discrete_sigmas(ABAR, discrete_timesteps(1000, 10, "trailing"))
    x = SeedNoise(range(4), dtype=torch.float64).randn([2]) * sigmas[0]
    a = sample_dpmpp_2m(den, x, sigmas)
    b = sample_dpmpp_2m(MIX, x, sigmas)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_vp_wrapper_casts_only_the_network_input():
    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))
            self.dtypes = set()

        def forward(self, x, t):
            self.dtypes.add((x.dtype, t.dtype))
            return torch.zeros_like(x)

    net = Half()
    den = VPDenoiser(net, ABAR)
    x = torch.full((2, 3), 50.0, dtype=torch.float64)
    out = den(x, torch.tensor([20.0, 20.0], dtype=torch.float64))
    assert net.dtypes == {(torch.float32, torch.int64)} and out.dtype == torch.float64
    assert torch.equal(out, x)  # eps = 0 -> D = x exactly, no float32 rounding of x


def test_edm_denoiser_casts_and_publishes():
    class Precond(nn.Module):
        sigma_min, sigma_max = 0.002, 80.0

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))
            self.log = []

        def forward(self, x, sigma, class_labels=None):
            self.log.append((x.dtype, current_sigma(), class_labels))
            return MIX(x, sigma).to(torch.float32) * self.w

    net = Precond()
    den = EDMDenoiser(net)
    assert (den.sigma_min, den.sigma_max, den.input_dtype) == (0.002, 80.0, torch.float32)
    x = SeedNoise(range(2), dtype=torch.float64).randn([2]) * 80
    labels = torch.tensor([1, 2])
    out = sample_heun(den, x, torch.tensor([80.0, 1.0, 0.0], dtype=torch.float64), extra_args={"class_labels": labels})
    assert out.dtype == torch.float64 and len(net.log) == 3
    assert [float(s[0]) for _, s, _ in net.log] == [80.0, 1.0, 1.0]
    assert all(dt == torch.float32 and lab is labels for dt, _, lab in net.log)


def label_denoiser(x, sigma, class_labels=None):
    scale = 1.0 if class_labels is None else (1.0 + class_labels.to(torch.float64))[:, None]
    return MIX(x, sigma) * scale + 0.1 * torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_cfg_formula(scale):
    x = SeedNoise(range(3), dtype=torch.float64).randn([2]) * 5
    sigma = torch.full((3,), 5.0, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    d_c = label_denoiser(x, sigma, class_labels=labels)
    d_u = label_denoiser(x, sigma, class_labels=None)
    out = CFGDenoiser(label_denoiser, scale, {"class_labels": None})(x, sigma, class_labels=labels)
    assert torch.allclose(out, d_u + scale * (d_c - d_u), rtol=0, atol=1e-14)
    null = torch.full((3,), -1)  # label -1 -> scale 0 in label_denoiser's formula
    batched = CFGDenoiser(label_denoiser, scale, {"class_labels": null}, batched=True)
    d_null = label_denoiser(x, sigma, class_labels=null)
    assert torch.allclose(batched(x, sigma, class_labels=labels), d_null + scale * (d_c - d_null), atol=1e-14)
    with pytest.raises(ValueError, match="batched CFG"):
        CFGDenoiser(label_denoiser, 2.0, {"class_labels": None}, batched=True)(x, sigma, class_labels=labels)


def test_alphas_cumprod_schedules():
    lin = alphas_cumprod(1000, "linear")
    betas = 1 - torch.cat([lin[:1], lin[1:] / lin[:-1]])
    assert torch.allclose(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), atol=1e-15)
    sl = alphas_cumprod(1000, "scaled_linear", 0.00085, 0.012)
    assert float(1 - sl[0]) == pytest.approx(0.00085) and float(1 - sl[-1] / sl[-2]) == pytest.approx(0.012)
    cos = alphas_cumprod(1000, "cosine")
    f0 = math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert float(cos[499]) == pytest.approx(math.cos((500 / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 / f0)
