"""Generation with a sampler and a rule, and ``skiptune sample`` through its entry point."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import randomize
from skiptune import load_model
from skiptune.experiment.generate import SamplingSpec, generate
from skiptune.sampling import GaussianMixture


@pytest.fixture(scope="module")
def net():
    return randomize(load_model("ddpmpp-cifar10-cond-tiny"), seed=2)


def test_same_seeds_same_images_and_rule_one_is_identity(net):
    spec = SamplingSpec("heun", nfe=5)
    a = generate(net, "3-8", spec, batch_size=3)
    b = generate(net, "3-8", spec, batch_size=3, rule="layer:1")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.nfe == 5 and a.seeds == [3, 4, 5, 6, 7, 8]
    c = generate(net, "3-8", spec, batch_size=3, rule="layer:0.5")
    assert not torch.allclose(a.images, c.images)
    # a subset of seeds reproduces the same images (up to float32 batch effects of the convolutions)
    d = generate(net, [5, 8], spec, batch_size=1)
    torch.testing.assert_close(d.images, a.images[[2, 5]], rtol=1e-3, atol=1e-3)
    assert torch.equal(d.labels, a.labels[[2, 5]])
    assert not any(m._forward_pre_hooks for m in net.modules())


def test_labels_cover_classes_and_fixed_class(net):
    g = generate(net, "0-39", SamplingSpec("euler", steps=1), batch_size=40)
    assert g.labels.min() >= 0 and g.labels.max() < net.label_dim and len(set(g.labels.tolist())) > 5
    g = generate(net, "0-3", SamplingSpec("euler", steps=1), class_label=7)
    assert g.labels.tolist() == [7] * 4
    with pytest.raises(ValueError, match="outside"):
        generate(net, "0", SamplingSpec("euler", steps=1), class_label=10)


def test_generation_is_batch_invariant_with_a_batch_invariant_denoiser():
    """With the analytic mixture denoiser as the 'network', batches of 1, 7 and 64 agree bit for bit."""
    g = torch.Generator().manual_seed(0)
    gm = GaussianMixture([0.3, 0.7], torch.randn(2, 8, generator=g), [0.2, 0.5])

    class Oracle(torch.nn.Module):
        img_channels, img_resolution, label_dim, sigma_min, sigma_max = 2, 2, 0, 0.002, 80.0

        def forward(self, x, sigma, class_labels=None):
            s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
            rows = [gm.denoise(x[i:i + 1].double().reshape(1, -1), float(s[i])) for i in range(len(x))]
            return torch.cat(rows).reshape(x.shape)

    outs = [generate(Oracle(), "0-69", SamplingSpec("dpmpp_2m", nfe=6), batch_size=bs).images for bs in (1, 7, 64)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    with pytest.raises(ValueError, match="no known skip sites"):
        generate(Oracle(), "0", SamplingSpec("euler", steps=2), rule="layer:0.7")


def test_sample_cli_writes_everything(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "skiptune", "sample", "--arch", "adm-tiny", "--sampler", "unipc",
                          "--nfe", "5", "--seeds", "0-5", "--rule", "layer:0.7", "--batch", "4", "--out", str(out),
                          "--no-progress"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    data = np.load(out / "images.npz")
    assert data["images"].shape == (6, 16, 16, 3) and data["images"].dtype == np.uint8
    assert data["seeds"].tolist() == list(range(6)) and data["labels"].shape == (6,)
    assert len(list((out / "images").glob("*.png"))) == 6 and (out / "grid.png").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["sampling"]["nfe"] == 5 and cfg["config"]["rule"] == "layer:0.7:1"
    assert {"torch", "skiptune", "git_revision"} <= set(cfg["environment"])


def test_sample_cli_errors(tmp_path):
    from skiptune.cli import main
    assert main(["sample", "--arch", "ddpmpp-tiny", "--sampler", "heun", "--nfe", "8", "--out", str(tmp_path)]) == 2
    assert main(["sample", "--arch", "ddpmpp-tiny", "--rule", "layer:-1", "--out", str(tmp_path)]) == 2
