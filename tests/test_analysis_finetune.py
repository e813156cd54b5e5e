"""``finetune``: rho fitting recovers a known optimum, full fine-tuning works on a copy, and the CLI end to end."""

import argparse
import dataclasses
import json
import math

import pytest
import torch

from analysis_nets import MaskNet, tiny_net, toy_adapter
from skiptune.analysis.denoising import denoise
from skiptune.analysis.finetune import (
    FidConfig,
    FinetuneConfig,
    FullFinetuneConfig,
    RhoFitConfig,
    finetune_weights,
    fit_rho,
    make_loss,
    rho_of,
    run_finetune,
    theta_of,
)
from skiptune.cli import main
from skiptune.cli.analyses import finetune as finetune_cli
from skiptune.core.errors import InputError
from skiptune.demo.assets import classifier_extractor
from skiptune.experiment import Scorer, load_reference
from skiptune.experiment.results import units
from skiptune.io import save_checkpoint
from skiptune.store import Store


def _images(n, res=4, seed=1):
    return torch.rand((n, 1, res, res), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("param, target, rho_max, init", [("raw", (0.6, 1.3), 1.0, 1.0),
                                                          ("sigmoid", (0.6, 0.85), 1.0, 0.9),
                                                          ("sigmoid", (0.6, 1.3), 2.0, 1.0)])
def test_fit_recovers_the_optimum_of_a_toy_loss(param, target, rho_max, init, one_thread):
    # MaskNet's output is linear in (rho_0, rho_1) and equals y at sigma -> 0 exactly when rho = target,
    # so the pixel loss at sigma ~ e^-9 has its minimum there (shifted by O(sigma^2) only)
    with toy_adapter():
        fit = fit_rho(MaskNet(target), _images(16), make_loss("pixel"), param=param, steps=150, batch=8, lr=0.05,
                      init=init, rho_max=rho_max, weighting="none", p_mean=-9.0, p_std=0.1, seed=0)
    assert fit["rho"] == pytest.approx(list(target), abs=0.01)
    assert fit["loss"][-1] < 1e-3 * fit["loss"][0]
    if param == "sigmoid":
        assert all(0 < r < rho_max for trace in fit["rho_trace"] for r in trace)


def test_parametrisations_invert_and_validate():
    for param, rho in (("raw", 1.7), ("sigmoid", 0.3)):
        assert float(rho_of(torch.tensor(theta_of(rho, param)), param)) == pytest.approx(rho)
    assert float(rho_of(torch.tensor(theta_of(1.5, "sigmoid", 2.0)), "sigmoid", 2.0)) == pytest.approx(1.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        theta_of(1.0, "sigmoid")
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("wavelet")
    with pytest.raises(ValueError, match="needs a feature network"):
        make_loss("feature")


def test_loss_reductions_are_means_or_squared_norms():
    """pixel: mean or sum of (D - y)^2 over the C*H*W = 16 pixels; feature: over the 5 dims of a linear f (f(x) = W x,
    no bias), so with ``sum`` the hybrid loss is ||D - y||^2 + w ||W (D - y)||^2, computed here independently."""
    from torch import nn

    from skiptune.metrics import wrap_module

    w = torch.randn((5, 3 * 16), generator=torch.Generator().manual_seed(2))
    lin = nn.Sequential(nn.Flatten(), nn.Linear(48, 5, bias=False))
    lin[1].weight.data = w
    ext = wrap_module(lin, "linear", input_range=(-1.0, 1.0))
    d, y = _images(3, seed=3), _images(3, seed=4)
    err = (d - y).flatten(1).double()
    ferr = ((d - y).expand(-1, 3, -1, -1).flatten(1) @ w.T).double()
    for reduction, pix, feat in (("mean", err.pow(2).mean(1), ferr.pow(2).mean(1)),
                                 ("sum", err.pow(2).sum(1), ferr.pow(2).sum(1))):
        assert make_loss("pixel", reduction=reduction)(d, y).double() == pytest.approx(pix, rel=1e-5)
        got = make_loss("hybrid", ext, "features", 0.5, reduction)(d, y).double()
        assert got == pytest.approx(pix + 0.5 * feat, rel=1e-4)
    with pytest.raises(InputError, match="unknown reduction 'max'"):
        make_loss("pixel", reduction="max")
    with pytest.raises(InputError, match=r"FinetuneConfig\.reduction: unknown reduction"):
        FinetuneConfig(reduction="max")


def test_rho_moves_from_one_on_a_real_net_and_the_net_is_restored(one_thread):
    # rho = 1 exactly must still carry a gradient through the adapter's join hooks
    net = tiny_net()
    x = _images(2, res=8)
    before = denoise(net, x, 1.0)
    fit = fit_rho(net, _images(8, res=8), make_loss("pixel"), param="raw", steps=2, batch=4, lr=0.05, init=1.0)
    assert all(r != 1.0 for r in fit["rho"])
    assert all(p.requires_grad for p in net.parameters())  # flags restored
    assert torch.equal(denoise(net, x, 1.0), before)  # hooks removed


def test_full_finetuning_trains_a_copy_and_reports_checkpoints(one_thread):
    net = tiny_net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    seen = []
    out = finetune_weights(net, _images(8, res=8), make_loss("pixel"), steps=3, batch=4, lr=1e-3, checkpoints=[1, 3],
                           on_checkpoint=lambda step, m: seen.append((step, m.training)) or step * 10)
    assert seen == [(1, False), (3, False)] and out["checkpoints"] == {1: 10, 3: 30}
    assert len(out["loss"]) == 3 and all(math.isfinite(v) for v in out["loss"])
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())  # the original is untouched
    with pytest.raises(ValueError, match="checkpoints must lie in"):
        finetune_weights(net, _images(8, res=8), make_loss("pixel"), steps=3, checkpoints=[5])


def test_the_config_defaults_are_the_command_line_defaults():
    parser = argparse.ArgumentParser()
    finetune_cli.add_arguments(parser)
    assert finetune_cli.config_from_args(parser.parse_args([])) == FinetuneConfig()
    args = parser.parse_args(["--params", "sigmoid", "--full-checkpoints", "2,4", "--full-steps", "4", "--nfe", "3,5",
                              "--compare-rules", "const:0.7; layer:0.8", "--feature-weight", "0.5",
                              "--reduction", "sum"])
    config = finetune_cli.config_from_args(args)
    assert config.reduction == "sum" and FinetuneConfig().reduction == "mean"
    assert config.rho.params == ("sigmoid",) and config.fid.nfes == (3, 5)
    assert config.fid.compare_rules == ("const:0.7", "layer:0.8")
    assert config.full.checkpoint_steps == [2, 4] and config.rho.feature_weight == config.full.feature_weight == 0.5


@pytest.mark.parametrize("cls, settings, message", [
    (RhoFitConfig, {"params": ("tanh",)}, r"RhoFitConfig\.params: unknown parametrisation 'tanh'; use raw and/or"),
    (RhoFitConfig, {"params": "raw"}, r"RhoFitConfig\.params must be a sequence such as"),
    (RhoFitConfig, {"loss": "wavelet"}, r"RhoFitConfig\.loss: unknown loss 'wavelet'; use one of feature"),
    (RhoFitConfig, {"steps": 0}, r"RhoFitConfig\.steps must be an integer >= 1, got 0"),
    (RhoFitConfig, {"lr": 0.0}, r"RhoFitConfig\.lr must be a finite number > 0"),
    (RhoFitConfig, {"init_sigmoid": 1.0}, r"RhoFitConfig\.init_sigmoid must lie in \(0, sigmoid_max = 1\).*raise "
                                          "sigmoid_max"),
    (FullFinetuneConfig, {"steps": 4, "checkpoints": (2, 5)}, r"FullFinetuneConfig\.checkpoints must lie in 1\.\.4"),
    (FullFinetuneConfig, {"steps": -1}, r"FullFinetuneConfig\.steps must be an integer >= 0"),
    (FullFinetuneConfig, {"batch": 0}, r"FullFinetuneConfig\.batch must be an integer >= 1"),
    (FidConfig, {"sampler": "rk45"}, r"FidConfig\.sampler: unknown sampler 'rk45'; use one of .*heun"),
    (FidConfig, {"nfes": ()}, r"FidConfig\.nfes is empty"),
    (FidConfig, {"seeds": "5-2"}, r"FidConfig\.seeds '5-2'"),
    (FidConfig, {"seed_sets": 0}, r"FidConfig\.seed_sets must be an integer >= 1"),
    (FidConfig, {"compare_rules": ("bogus:1",)}, r"FidConfig\.compare_rules: cannot read rule 'bogus:1'"),
    (FinetuneConfig, {"weighting": "snr"}, r"FinetuneConfig\.weighting: unknown weighting 'snr'; use edm or none"),
    (FinetuneConfig, {"rho": {"steps": 3}}, r"FinetuneConfig\.rho must be a RhoFitConfig"),
])
def test_an_invalid_setting_is_refused_when_the_config_is_built(cls, settings, message):
    with pytest.raises(InputError, match=message):
        cls(**settings)


def test_configs_are_frozen_and_revalidated_on_replace():
    config = FinetuneConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]
    assert RhoFitConfig(params=["raw"]).params == ("raw",)  # sequences are kept as tuples
    assert RhoFitConfig(params=("raw",), init_sigmoid=1.0).init("raw") == 1.0  # unused sigmoid start: not checked
    assert dataclasses.replace(config.full, steps=10).checkpoint_steps == [5, 10]  # default: half-way and end
    assert FullFinetuneConfig(steps=4, checkpoints=(0, 2)).checkpoint_steps == [2]
    assert FullFinetuneConfig(steps=0).checkpoint_steps == []
    with pytest.raises(InputError, match="sigmoid_max"):
        dataclasses.replace(config.rho, sigmoid_max=0.5)


def test_the_library_runs_from_a_config_without_a_store(one_thread):
    net = tiny_net()
    ext = classifier_extractor()
    scorer = Scorer(ext, load_reference("digits", ext, resolution=8))
    config = FinetuneConfig(seed=1, rho=RhoFitConfig(params=("sigmoid",), loss="pixel", steps=2, batch=4),
                            full=FullFinetuneConfig(steps=0),
                            fid=FidConfig(nfes=(3,), seeds="0-3", seed_sets=2, batch=4, compare_rules=()))
    result = run_finetune(net, _images(8, res=8), config, scorer=scorer)
    assert [r["method"] for r in result.rows] == ["baseline", "rho fine-tuned (sigmoid)"]
    assert result.config["rho"] == config.rho.record() and result.config["full"]["checkpoints"] == []
    assert result.config["fid"]["seed_sets"] == ["0-3", "4-7"] and result.config["seed"] == 1
    assert result.notes[2] == "Full fine-tuning skipped."


def test_cli_end_to_end_and_resumes_from_store(tmp_path, one_thread):
    model = save_checkpoint(tiny_net(), tmp_path / "tiny.safetensors")
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    args = ["analyze", "finetune", "--model", str(model), "--n", "64", "--rho-steps", "3", "--rho-batch", "4",
            "--full-steps", "2", "--full-batch", "4", "--nfe", "3", "--seeds", "0-7", "--seed-sets", "2",
            "--fid-batch", "8", "--db", str(db), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"finetune.{ext}").stat().st_size > 0
    got = json.loads((out / "finetune.json").read_text())
    methods = [r["method"] for r in got["rows"]]
    assert methods == ["baseline", "Skip-Tuning const:0.7", "rho fine-tuned (raw)", "rho fine-tuned (sigmoid)",
                       "full fine-tune (1 steps)", "full fine-tune (2 steps)"]
    rows = {r["method"]: r for r in got["rows"]}
    assert rows["rho fine-tuned (raw)"]["rule"].startswith("sites:") and len(
        rows["rho fine-tuned (raw)"]["rule"].split(",")) == 4
    for name, r in rows.items():  # the paired difference is against the baseline's seed sets
        if name != "baseline":
            assert r["fid_diff"] == pytest.approx(r["fid"] - rows["baseline"]["fid"], rel=1e-9, abs=1e-9)
    with Store(db) as store:
        assert len(units(store, "finetune-rho")) == 2
        (rec,) = units(store, "finetune-full")
        full = rec.result
        full["checkpoints"]["2"]["none|3"] = [-1.0, -3.0]
        store.complete_run(rec.config, {}, result=full, overwrite=True)
        runs = len(store.runs())
    assert main(args) == 0  # every unit and FID point from the store: nothing recomputed
    again = {r["method"]: r for r in json.loads((out / "finetune.json").read_text())["rows"]}
    assert again["full fine-tune (2 steps)"]["fid"] == pytest.approx(-2.0)
    assert again["rho fine-tuned (sigmoid)"]["rule"] == rows["rho fine-tuned (sigmoid)"]["rule"]
    with Store(db) as store:
        assert len(store.runs()) == runs


def test_a_revised_sampler_recomputes_the_cached_fine_tune(tmp_path, one_thread, monkeypatch):
    """The fine-tune unit stores FIDs measured with its sampler, so its key must carry the sampler's revision."""
    from skiptune.sampling import samplers

    model = save_checkpoint(tiny_net(), tmp_path / "tiny.safetensors")
    db = tmp_path / "r.sqlite"
    args = ["analyze", "finetune", "--model", str(model), "--n", "16", "--params", "raw", "--rho-steps", "1",
            "--rho-batch", "4", "--full-steps", "1", "--full-batch", "4", "--sampler", "unipc", "--nfe", "3",
            "--seeds", "0-3", "--seed-sets", "2", "--fid-batch", "4", "--db", str(db), "--out", str(tmp_path / "o"),
            "--no-progress"]
    monkeypatch.setattr(samplers, "REVISIONS", {"unipc": 1})
    assert main(args) == 0
    monkeypatch.setattr(samplers, "REVISIONS", {"unipc": 2})
    assert main(args) == 0
    with Store(db) as store:
        assert len(units(store, "finetune-full")) == 2  # one per revision: the old FIDs are not reused
        assert len(units(store, "finetune-rho")) == 1  # the rho fit does not sample: still shared
