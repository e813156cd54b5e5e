"""The training loop: EMA maths, data order, loss decrease, bit-exact resume, files written."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from skiptune.io import load_model, open_model
from skiptune.train import TrainConfig, ema_beta, load_dataset, make_shapes, train, update_ema
from skiptune.train.loop import EpochSampler

TINY = dict(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=())


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread (and two threads thrash on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ema_beta_has_the_configured_half_life():
    b = ema_beta(64, 10**9, 6400, None)
    assert math.isclose(b ** (6400 / 64), 0.5, rel_tol=1e-12)  # h/B steps halve the old weights' share
    assert ema_beta(64, 0, 6400, 0.05) == 0.0  # ramp-up: half-life 0 before any image, EMA = net
    assert ema_beta(64, 1000, 6400, 0.05) == 0.5 ** (64 / 50)  # half-life capped at 0.05 * 1000
    ema, net = nn.Linear(2, 1), nn.Linear(2, 1)
    old = ema.weight.detach().clone()
    update_ema(ema, net, 0.9)
    torch.testing.assert_close(ema.weight, 0.9 * old + 0.1 * net.weight.detach())


def test_epoch_sampler_visits_every_image_once_per_epoch_and_is_stateless():
    sampler = EpochSampler(size=12, batch=4, seed=5)
    epoch0 = torch.cat([sampler.indices(s) for s in range(3)])
    epoch1 = torch.cat([sampler.indices(s) for s in range(3, 6)])
    assert sorted(epoch0.tolist()) == list(range(12)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(EpochSampler(12, 4, 5).indices(4), sampler.indices(4))  # no dependence on history
    straddle = EpochSampler(size=5, batch=4, seed=5)  # batch 1 spans epochs 0 and 1
    assert torch.equal(straddle.indices(1), torch.cat([straddle._perm(0)[4:], straddle._perm(1)[:3]]))


def test_tiny_net_loss_decreases(tmp_path):
    data = load_dataset("digits", resolution=8)
    config = TrainConfig(out=str(tmp_path / "run"), batch=32, steps=40, lr=3e-3, lr_warmup_images=320,
                         save_every=None, progress=False, **TINY)
    losses = np.array(train(config, data=data).losses)
    first, last = losses[:10], losses[-10:]
    # The per-step loss is noisy (random sigma and noise): demand a drop of at least three standard
    # errors of the difference of the two window means (a one-sided z-test at about p = 0.001).
    se = math.sqrt(first.var(ddof=1) / len(first) + last.var(ddof=1) / len(last))
    assert first.mean() - last.mean() > 3 * se, (first.mean(), last.mean(), se)


def _state(path):
    return torch.load(path, weights_only=True)


def _assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_interrupted_and_resumed_training_is_bit_identical(tmp_path):
    # Every source of randomness: data order, sigma/noise, flips, label dropout and network dropout.
    data = make_shapes(48, seed=2, resolution=8)
    common = dict(batch=8, steps=12, lr=2e-3, lr_warmup_images=32, save_every=4, log_every=1, progress=False,
                  data="shapes", cond=True, label_dropout=0.3, xflip=True, grad_clip=1.0, ema_halflife_images=40,
                  **{**TINY, "dropout": 0.2})
    full = train(TrainConfig(out=str(tmp_path / "full"), **common), data=data)

    class Killed(Exception):
        pass

    def kill_at_10(info):
        if info.step == 10:
            raise Killed  # like kill -9 between snapshots: steps 9-10 are lost, the state is from step 8

    part = TrainConfig(out=str(tmp_path / "part"), **common)
    with pytest.raises(Killed):
        train(part, data=data, callback=kill_at_10)
    with pytest.raises(ValueError, match="already holds a training run"):
        train(part, data=data)
    with pytest.raises(ValueError, match="differs in lr"):
        train(TrainConfig(out=str(tmp_path / "part"), **{**common, "lr": 1e-3}), resume=True, data=data)
    resumed = train(part, resume=True, data=data)
    assert resumed.resumed and resumed.start_step == 8 and resumed.steps == 12
    assert resumed.losses == full.losses[8:]

    a, b = _state(tmp_path / "full/training-state.pt"), _state(tmp_path / "part/training-state.pt")
    _assert_same_tensors(a["net"], b["net"])
    _assert_same_tensors(a["ema"], b["ema"])
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        _assert_same_tensors(pa, pb)
    _assert_same_tensors(load_file(tmp_path / "full/network.safetensors"),
                         load_file(tmp_path / "part/network.safetensors"))
    # The log keeps one line per step: the lines the killed run wrote after its state were dropped.
    log = [json.loads(line) for line in (tmp_path / "part/train-log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert [r["loss"] for r in log] == full.losses

    # A graceful stop (callback returns True) saves the state at that step; resuming also matches.
    stop = TrainConfig(out=str(tmp_path / "stop"), **common)
    halted = train(stop, data=data, callback=lambda info: info.step == 5)
    assert halted.stopped and halted.steps == 5 and halted.network.name == "ema-0000005.safetensors"
    train(stop, resume=True, data=data)
    _assert_same_tensors(a["ema"], _state(tmp_path / "stop/training-state.pt")["ema"])
    torch.set_num_threads(2)  # reductions depend on the thread count: resuming with another one warns
    with pytest.warns(UserWarning, match="not be bit-identical"):
        train(stop, resume=True, data=data)


def test_run_files_and_checkpoint(tmp_path):
    data = load_dataset("digits", split="test", resolution=8)
    config = TrainConfig(out=str(tmp_path / "run"), batch=8, steps=3, save_every=2, progress=False, seed=1,
                         cond=True, **TINY)
    result = train(config, data=data)
    resolved = json.loads((tmp_path / "run/config.json").read_text())
    assert resolved["train"]["seed"] == 1 and resolved["total_steps"] == 3
    assert resolved["dataset"]["fingerprint"] == data.fingerprint() and resolved["dataset"]["size"] == 300
    assert resolved["network"]["kwargs"]["label_dim"] == 10 and resolved["network"]["kwargs"]["img_channels"] == 1
    assert {"torch", "git_revision", "skiptune"} <= set(resolved["provenance"])
    assert (tmp_path / "run/ema-0000002.safetensors").exists()
    loaded = open_model(result.network)
    net = loaded.net
    assert loaded.extra["step"] == 3 and loaded.extra["num_classes"] == 10
    _assert_same_tensors(net.state_dict(), _state(result.state)["ema"])
    out = net(torch.zeros(2, 1, 8, 8), torch.tensor([1.0, 2.0]), torch.eye(10)[:2])
    assert out.shape == (2, 1, 8, 8)
    other = train(TrainConfig(**{**config.to_dict(), "out": str(tmp_path / "seed2"), "seed": 2}), data=data)
    assert not torch.equal(_state(other.state)["ema"]["model.enc.8x8_conv.weight"],
                           _state(result.state)["ema"]["model.enc.8x8_conv.weight"])


def test_learning_rate_warmup_constant_and_cooldown():
    from skiptune.train.loop import learning_rate

    cfg = TrainConfig(batch=8, steps=20, lr=1.0, lr_warmup_images=32, lr_cooldown_start=10)
    got = [learning_rate(cfg, s) for s in range(20)]
    # warm-up: (step+1)*8/32 until it reaches 1; cool-down: (20 - step) / (20 - 10) from step 10 on
    expected = [min((s + 1) * 8 / 32, 1.0) * (1.0 if s < 10 else (20 - s) / 10) for s in range(20)]
    assert got == pytest.approx(expected, rel=0, abs=1e-15)
    assert got[3] == 1.0 and got[9] == 1.0 and got[10] == 1.0 and got[19] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_cooldown_start"):
        TrainConfig(steps=20, lr_cooldown_start=20).validate()


def test_cooldown_added_when_resuming_a_constant_lr_run_matches_one_planned_run(tmp_path):
    data = make_shapes(32, seed=3, resolution=8)
    common = dict(batch=8, lr=2e-3, lr_warmup_images=16, save_every=4, log_every=1, progress=False, data="shapes",
                  ema_halflife_images=40, **TINY)
    planned = train(TrainConfig(out=str(tmp_path / "planned"), steps=12, lr_cooldown_start=8, **common), data=data)
    first = train(TrainConfig(out=str(tmp_path / "ext"), steps=8, **common), data=data)  # constant lr, 8 steps
    assert first.losses == planned.losses[:8]
    # extending it with a cool-down that begins where it stopped leaves the steps taken unchanged: allowed
    ext = train(TrainConfig(out=str(tmp_path / "ext"), steps=12, lr_cooldown_start=8, **common), resume=True,
                data=data)
    assert ext.losses == planned.losses[8:]
    _assert_same_tensors(_state(tmp_path / "planned/training-state.pt")["ema"],
                         _state(tmp_path / "ext/training-state.pt")["ema"])
    # a cool-down that would have begun before the steps already taken is refused, as is a new length of a
    # run that is already cooling down
    with pytest.raises(ValueError, match="lr_cooldown_start/steps"):
        train(TrainConfig(out=str(tmp_path / "ext"), steps=16, lr_cooldown_start=4, **common), resume=True,
              data=data)
    with pytest.raises(ValueError, match="lr_cooldown_start/steps"):
        train(TrainConfig(out=str(tmp_path / "ext"), steps=16, lr_cooldown_start=8, **common), resume=True,
              data=data)


def test_warm_start_begins_from_the_checkpoint_and_resumes(tmp_path):
    from skiptune.metrics import file_sha256
    from skiptune.train import EDMLoss
    from skiptune.train.loop import derive_seed

    data = make_shapes(32, seed=3, resolution=8)
    common = dict(batch=8, lr=2e-3, lr_warmup_images=16, log_every=1, progress=False, data="shapes",
                  ema_halflife_images=40, **TINY)
    source = train(TrainConfig(out=str(tmp_path / "source"), steps=4, save_every=None, **common), data=data)
    ckpt = tmp_path / "source.safetensors"
    ckpt.write_bytes(source.network.read_bytes())
    warm = dict(common, steps=6, save_every=2, seed=5, init_from=str(ckpt))
    full = train(TrainConfig(out=str(tmp_path / "warm"), **warm), data=data)

    # Oracle: the first step's loss is the EDM loss of the checkpoint's network on that step's batch and noise.
    start = load_model(ckpt).train()
    idx = EpochSampler(len(data), 8, 5).indices(0)
    gen = torch.Generator().manual_seed(derive_seed(5, "step", 0))
    with torch.no_grad():
        expected = EDMLoss(-1.2, 1.2, 0.0)(start, data.images[idx], None, gen).mean().item()
    assert full.losses[0] == pytest.approx(expected, rel=1e-6)
    cold = train(TrainConfig(out=str(tmp_path / "cold"), **{**warm, "init_from": None}), data=data)
    assert abs(cold.losses[0] - expected) > 1e-3 * expected  # the oracle tells a warm start from a cold one
    record = json.loads((tmp_path / "warm/config.json").read_text())["init"]
    assert record == {"path": str(ckpt), "sha256": file_sha256(ckpt), "step": 4, "images": 32}

    # An interrupted warm-started run resumes from its own state, without the checkpoint it started from.
    part = TrainConfig(out=str(tmp_path / "part"), **warm)
    train(part, data=data, callback=lambda info: info.step == 3)
    moved = ckpt.rename(tmp_path / "moved.safetensors")
    with pytest.raises(ValueError, match="differs in init_from"):
        train(TrainConfig(out=str(tmp_path / "part"), **{**warm, "init_from": str(moved)}), resume=True, data=data)
    resumed = train(part, resume=True, data=data)
    assert resumed.losses == full.losses[3:]
    _assert_same_tensors(_state(full.state)["ema"], _state(resumed.state)["ema"])
    assert json.loads((tmp_path / "part/config.json").read_text())["init"] == record

    # The same weights in an EDM network pickle (read without running its code) start the same run.
    from edm_format import write_edm_pickle
    from skiptune.io.checkpoint import network_config

    pickled = tmp_path / "source.pkl"
    write_edm_pickle(pickled, start, network_config(start)["kwargs"])
    from_pickle = train(TrainConfig(out=str(tmp_path / "pkl"), **{**warm, "init_from": str(pickled)}), data=data)
    assert from_pickle.losses == full.losses

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(TrainConfig(out=str(tmp_path / "gone"), **warm), data=data)
    other = {**warm, "init_from": str(moved), "model_channels": 16}
    with pytest.raises(ValueError, match=r"another network .*model_channels=8 vs 16"):
        train(TrainConfig(out=str(tmp_path / "wide"), **other), data=data)
