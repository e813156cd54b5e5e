"""``skiptune train`` through the real entry point, resume through the CLI, and option errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from skiptune.cli import main
from skiptune.io import load_model, open_model

TINY = ["--model-channels", "8", "--channel-mult", "1,2", "--num-blocks", "1", "--attn", "none"]


def test_train_end_to_end_then_resume(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", "shapes", "--data-size", "32", "--resolution", "8", *TINY, "--batch", "8",
            "--lr-warmup", "16", "--save-every", "2", "--log-every", "1", "--out", str(out), "--no-progress",
            "--threads", "1"]
    proc = subprocess.run([sys.executable, "-m", "skiptune", *args, "--steps", "4"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "steps       0 -> 4 of 4" in proc.stdout and "network.safetensors" in proc.stdout
    net = load_model(out / "network.safetensors")
    assert net.img_resolution == 8 and net.img_channels == 3 and net.label_dim == 0
    assert json.loads((out / "config.json").read_text())["network"]["kwargs"]["channel_mult"] == [1, 2]
    # Without --resume the run directory is protected; with it the run continues to 6 steps.
    assert main([*args, "--steps", "6"]) == 2
    assert main([*args, "--steps", "6", "--resume"]) == 0
    log = [json.loads(line) for line in (out / "train-log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert open_model(out / "network.safetensors").extra["step"] == 6
    # --init-from continues from the finished network in a new run directory.
    warm = [*args[:-5], "--out", str(tmp_path / "warm"), "--no-progress", "--threads", "1", "--steps", "1"]
    assert main([*warm, "--init-from", str(out / "network.safetensors")]) == 0
    init = json.loads((tmp_path / "warm/config.json").read_text())["init"]
    assert init["path"] == str(out / "network.safetensors") and init["step"] == 6


def test_train_options_are_validated(tmp_path, capsys):
    base = ["train", "--steps", "1", "--out", str(tmp_path / "x"), "--no-progress"]
    cases = [
        (["--data", "digits", "--arch", "ddpmpp-tiny", "--model-channels", "8"], "cannot be combined"),
        (["--data", "digits", "--channel-mult", "1,x"], "comma-separated integers"),
        (["--data", "nosuchset"], "not 'digits' or 'shapes'"),
        (["--data", "digits", "--arch", "ddpmpp-cifar10"], "32px images but the data are 16px"),
        (["--data", "digits", "--attn", "5"], "not among the UNet's levels"),
        (["--data", "digits", "--label-dropout", "0.1"], "needs cond"),
        (["--data", "digits", "--batch", "0"], "batch must be >= 1"),
        (["--data", "digits", "--xflip"], "not mirror-symmetric"),
        (["--data", "digits", "--ema-rampup", "x"], "--ema-rampup must be"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    assert main([*base, "--data", str(tmp_path / "a.npz"), "--cond"]) == 2
    assert "has no labels" in capsys.readouterr().err
    (tmp_path / "net.json").write_text(json.dumps({"img_channels": 3, "model_type": "SongUNet"}))
    assert main([*base, "--data", "digits", "--net-json", str(tmp_path / "net.json")]) == 2
    assert "img_channels=3 does not match" in capsys.readouterr().err


def test_train_with_net_json_and_preset(tmp_path):
    torch.set_num_threads(1)
    spec = {"class_name": "EDMPrecond", "kwargs": {"model_type": "SongUNet", "model_channels": 8,
                                                   "channel_mult": [1], "num_blocks": 1, "attn_resolutions": []}}
    (tmp_path / "net.json").write_text(json.dumps(spec))
    base = ["train", "--data", "digits", "--steps", "1", "--batch", "4", "--no-progress"]
    assert main([*base, "--net-json", str(tmp_path / "net.json"), "--out", str(tmp_path / "a")]) == 0
    assert load_model(tmp_path / "a/network.safetensors").img_resolution == 16
    assert main([*base, "--arch", "ddpmpp-tiny", "--cond", "--out", str(tmp_path / "b")]) == 0
    net = load_model(tmp_path / "b/network.safetensors")
    assert net.img_channels == 1 and net.label_dim == 10  # taken from the data


@pytest.mark.parametrize("objective", ["edm", "ddpm", "s2dm"])
def test_the_command_line_and_the_library_train_the_same_run_by_default(objective):
    """Defaults and policy live in TrainConfig: the options the command line leaves unset give the library's run."""
    from dataclasses import asdict

    from skiptune.cli import build_parser
    from skiptune.cli.train import config_from_args
    from skiptune.train import TrainConfig

    args = build_parser().parse_args(["train", "--data", "digits", "--out", "runs/x", "--objective", objective,
                                      "--steps", "5"])
    cli = config_from_args(args)
    lib = TrainConfig(objective=objective, steps=5)
    differing = {k: (v, asdict(lib)[k]) for k, v in asdict(cli).items() if asdict(lib)[k] != v}
    assert set(differing) <= {"out", "progress"}, differing  # where results go and the progress bar
    assert lib.grad_clip == (None if objective == "edm" else 1.0)  # the DDPM recipe clips, EDM does not
