"""The EDM loss against hand computations, and its noise-level and label-dropout sampling."""

import math

import numpy as np
import torch
from torch import nn

from skiptune.nets import build_network
from skiptune.train import EDMLoss, ddpmpp_kwargs, edm_loss, edm_weight


class AffineDenoiser(nn.Module):
    """D(x, sigma) = a x + b sigma (+ the label index sum), a toy denoiser with known output."""

    sigma_data = 0.5

    def __init__(self, a: float = 0.8, b: float = 0.1):
        super().__init__()
        self.a, self.b = a, b
        self.seen_sigma = None
        self.seen_labels = None

    def forward(self, x, sigma, class_labels=None):
        self.seen_sigma = sigma.detach().clone()
        self.seen_labels = None if class_labels is None else class_labels.detach().clone()
        return self.a * x + self.b * sigma


def test_edm_loss_equals_hand_computation():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 2, 4, 4, generator=g) * 2 - 1
    n = torch.randn(3, 2, 4, 4, generator=g)
    sigma = torch.tensor([0.05, 0.7, 12.0])
    got = edm_loss(AffineDenoiser(), y, sigma, n).double().numpy()

    yy, nn_, s = y.double().numpy(), n.double().numpy(), sigma.double().numpy()[:, None, None, None]
    sd = 0.5
    weight = (s**2 + sd**2) / (s * sd) ** 2
    expected = weight * (0.8 * (yy + s * nn_) + 0.1 * s - yy) ** 2
    np.testing.assert_allclose(got, expected, rtol=2e-5)
    # A scalar weight by hand at sigma = 0.7: (0.49 + 0.25) / (0.35^2) = 0.74 / 0.1225.
    assert math.isclose(float(edm_weight(torch.tensor(0.7), 0.5)), 0.74 / 0.1225, rel_tol=1e-6)


def test_untrained_edm_network_gives_the_preconditioning_loss():
    """With the raw network's output layer zeroed, D = c_skip x, so the loss is known in closed form:
    lambda (c_skip (y + sigma n) - y)^2 with c_skip = sd^2/(sigma^2 + sd^2)."""
    net = build_network("EDMPrecond", ddpmpp_kwargs(8, 1, 0, model_channels=8, channel_mult=(1, 2), num_blocks=1,
                                                     attn_resolutions=()))
    for name, p in net.named_parameters():
        if "aux_conv" in name:
            nn.init.zeros_(p)
    g = torch.Generator().manual_seed(1)
    y = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    n = torch.randn(4, 1, 8, 8, generator=g)
    sigma = torch.tensor([0.002, 0.3, 1.0, 80.0])
    with torch.no_grad():
        got = edm_loss(net, y, sigma, n).double()
    s, sd = sigma.double().reshape(-1, 1, 1, 1), 0.5
    y64, n64 = y.double(), n.double()
    weight = (s**2 + sd**2) / (s * sd) ** 2
    c_skip = sd**2 / (s**2 + sd**2)
    residual = c_skip * (y64 + s * n64) - y64
    # Compare residuals |D - y| = sqrt(loss / weight): float32 forms x = y + sigma n and c_skip x with a few
    # roundings of relative size 2^-24 each, so the error is bounded by 4 * 2^-23 * (|y| + sigma |n|).
    bound = 4 * 2.0**-23 * (y64.abs() + s * n64.abs())
    assert bool(((got / weight).sqrt() - residual.abs()).abs().le(bound).all())


def test_sigma_is_log_normal_with_edm_parameters():
    loss = EDMLoss()
    z = torch.randn([5], generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(loss.sample_sigma(5, torch.Generator().manual_seed(7)), (-1.2 + 1.2 * z).exp())
    n = 20_000
    log_sigma = loss.sample_sigma(n, torch.Generator().manual_seed(0)).log().double()
    # Sample mean and std of N(-1.2, 1.2^2): standard errors 1.2/sqrt(n) and 1.2/sqrt(2n); allow 4 of them.
    assert abs(float(log_sigma.mean()) + 1.2) < 4 * 1.2 / math.sqrt(n)
    assert abs(float(log_sigma.std()) - 1.2) < 4 * 1.2 / math.sqrt(2 * n)


def test_edm_loss_draws_sigma_first_and_drops_labels():
    net = AffineDenoiser()
    y = torch.zeros(2000, 1, 2, 2)
    one_hot = torch.nn.functional.one_hot(torch.arange(2000) % 4, 4).float()
    EDMLoss()(net, y, one_hot, torch.Generator().manual_seed(3))
    torch.testing.assert_close(net.seen_sigma.flatten(), EDMLoss().sample_sigma(2000, torch.Generator().manual_seed(3)))
    assert torch.equal(net.seen_labels, one_hot)  # no dropout by default
    EDMLoss(label_dropout=1.0)(net, y, one_hot, torch.Generator().manual_seed(3))
    assert float(net.seen_labels.abs().sum()) == 0
    EDMLoss(label_dropout=0.25)(net, y, one_hot, torch.Generator().manual_seed(3))
    dropped = float((net.seen_labels.sum(dim=1) == 0).double().mean())
    # Binomial(2000, 0.25): std of the share sqrt(0.25 * 0.75 / 2000) ~ 0.0097; allow 4 of them.
    assert abs(dropped - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 2000)
