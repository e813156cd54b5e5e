"""Classifier-free guidance through SamplingSpec, generate, stored points and the command line."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cli_faults import assert_fails_cleanly
from skiptune.cli import main
from skiptune.experiment import ModelRef, Point, SamplingSpec, ScoringSpec, generate
from skiptune.experiment.generate import check_guidance
from skiptune.sampling import SeedNoise


class TwoWay(nn.Module):
    """A denoiser whose conditional and unconditional outputs are known: D_c = 0.5 x + onehot[0],
    D_u = 0.5 x (class_labels=None is its trained null label)."""

    img_channels, img_resolution, label_dim = 1, 2, 3

    def __init__(self, null_label: bool = True):
        super().__init__()
        self.null_label = null_label
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, sigma, class_labels=None, **_):
        out = 0.5 * x * self.w
        if class_labels is not None:
            out = out + class_labels[:, :1].reshape(-1, 1, 1, 1).to(x.dtype)
        return out


@pytest.mark.parametrize("w", [0.0, 1.0, 1.4, 3.0])
def test_guided_sample_is_the_cfg_combination(w):
    # one Euler step to 0 returns D(x_T, sigma_max) = D_u + W (D_c - D_u) = 0.5 x_T + W [label == 0]
    spec = SamplingSpec("euler", nfe=1, guidance=w, sigma_min=0.002, sigma_max=80.0)
    g = generate(TwoWay(), "0-7", spec)
    noise = SeedNoise(list(range(8)))
    x_t = noise.randn([1, 2, 2]).to(torch.float64) * 80.0
    labels = (noise.rand([1]).reshape(-1).to(torch.float64) * 3).floor().long()
    want = 0.5 * x_t + w * (labels == 0).to(torch.float64).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(g.images.double(), want, rtol=1e-6, atol=1e-5)


def test_guidance_one_is_no_guidance_and_keys_differ():
    assert SamplingSpec("heun", nfe=5, guidance=1.0).guidance is None
    model = ModelRef("0" * 64)
    scoring = ScoringSpec("f", "0" * 64, "1" * 64, 100)
    keys = {Point(model, SamplingSpec("heun", nfe=5, guidance=w), "none", "0-3", scoring).key()
            for w in (None, 1.0, 1.5)}
    assert len(keys) == 2  # None and 1.0 are one point; 1.5 another


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), True, "2"])
def test_bad_guidance_is_refused(bad):
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
        SamplingSpec("heun", nfe=5, guidance=bad)


def test_guidance_needs_a_null_label():
    with pytest.raises(ValueError, match="no trained null label"):
        check_guidance(TwoWay(null_label=False), 2.0)
    uncond = TwoWay()
    uncond.label_dim = 0
    with pytest.raises(ValueError, match="unconditional"):
        check_guidance(uncond, 2.0)
    check_guidance(TwoWay(null_label=False), None)  # no guidance: nothing to check


def test_cli_sample_with_guidance_on_a_latent_uvit(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--arch", "uvit-tiny", "--sampler", "dpmpp_2m", "--nfe", "3", "--seeds", "0-1",
                 "--guidance", "1.4", "--no-progress", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["sampling"]["guidance"] == 1.4 and cfg["sampling"]["end"] == "sigma_min"


def test_cli_guidance_on_a_network_without_null_label_fails_cleanly(tmp_path, capsys):
    line = assert_fails_cleanly(["sample", "--arch", "ddpmpp-cifar10-cond-tiny", "--nfe", "3", "--seeds", "0",
                                 "--guidance", "2", "--out", str(tmp_path / "o")], capsys,
                                names=["no trained null label", "--guidance"], untouched=[tmp_path])
    assert not (tmp_path / "o").exists(), line
