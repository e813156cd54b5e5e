"""``skiptune compare-training`` through the real entry point: the table, the store rows, resuming."""

import itertools
import json
import math
import subprocess
import sys

import pytest

from skiptune import load_model, save_checkpoint
from skiptune.cli import main
from skiptune.experiment.results import stored_results
from skiptune.metrics import state_dict_sha256
from skiptune.nets import build_network
from skiptune.store import Store
from skiptune.train import TrainConfig, ddpmpp_kwargs, load_dataset, train

TINY = dict(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, one_thread):
    """A DDPM and an S²-DM model, 2 steps each on 8x8 digits, same seed and network."""
    root = tmp_path_factory.mktemp("pair")
    data = load_dataset("digits", split="test", resolution=8)
    paths = {}
    for objective in ("ddpm", "s2dm"):
        cfg = TrainConfig(out=str(root / objective), objective=objective, batch=8, steps=2, lr=1e-3, lr_warmup_images=8,
                          grad_clip=1.0,
                          save_every=None, progress=False, **TINY)
        paths[objective] = train(cfg, data=data).network
    return paths


def test_compare_training_cli_table_store_rows_and_resume(pair, tmp_path, capsys):
    db, out = tmp_path / "results.sqlite", tmp_path / "out"
    args = ["compare-training", str(pair["ddpm"]), str(pair["s2dm"]), "--samplers", "ddim,ipndm", "--steps", "2,3",
            "--seeds", "0-39", "--seed-sets", "2", "--db", str(db), "--batch", "40", "--threads", "1",
            "--no-progress", "--out", str(out)]
    first = subprocess.run([sys.executable, "-m", "skiptune", *args], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "| sampler | steps | FID base | FID S²-DM | relative improvement |" in first.stdout
    assert "ddpm" in first.stdout.splitlines()[0] and "s2dm (skip span 10, tau 0.99)" in first.stdout.splitlines()[1]

    shas = {role: state_dict_sha256(load_model(path)) for role, path in pair.items()}
    expected = set(itertools.product(shas.values(), ["ddim", "ipndm"], [2, 3], ["0-39", "40-79"]))
    with Store(db) as store:
        runs = store.runs({"kind": "point"})
        counts = store.counts()
        analyses = stored_results(store, "compare-training")
    assert len(runs) == len(expected) == 16  # and one more run: the analysis summary
    assert counts["complete"] == 17 and counts["pending"] == counts["failed"] == 0
    assert {(r.config["model"], r.config["sampler"], r.config["nfe"], r.config["seeds"])
            for r in runs} == expected
    assert all(r.config["grid"] == "discrete" and r.config["features"] == "digits-classifier" for r in runs)
    assert len(analyses) == 1

    # The table's numbers are the stored FIDs: per-set values in seed-set order, improvement = mean((b - s) / b).
    fid = {(r.config["model"], r.config["sampler"], r.config["nfe"], r.config["seeds"]):
           r.metrics["fid"].value for r in runs}
    rows = json.loads((out / "compare.json").read_text())
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddim", 2), ("ddim", 3), ("ipndm", 2), ("ipndm", 3)]
    for row in rows:
        key = (row["sampler"], row["steps"])
        b = [fid[(shas["ddpm"], *key, s)] for s in ("0-39", "40-79")]
        s = [fid[(shas["s2dm"], *key, s)] for s in ("0-39", "40-79")]
        assert row["base"]["values"] == b and row["s2dm"]["values"] == s
        assert math.isclose(row["improvement"]["mean"], ((b[0] - s[0]) / b[0] + (b[1] - s[1]) / b[1]) / 2,
                            rel_tol=1e-12)
        assert row["nfe"] == row["steps"]

    # A rerun computes nothing: same table, same runs, untouched timestamps and attempt counts.
    assert main(args) == 0
    assert capsys.readouterr().out == first.stdout
    with Store(db) as store:
        again = store.runs({"kind": "point"})
        assert store.counts() == counts
    assert [(r.key, r.updated, r.attempts) for r in again] == [(r.key, r.updated, r.attempts) for r in runs]


def test_compare_training_validates_before_work(pair, tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    base = [str(pair["ddpm"]), str(pair["s2dm"]), "--db", str(db), "--no-progress"]
    assert main(["compare-training", *base, "--samplers", "ddim,nosuch"]) == 2
    assert "unknown sampler(s) nosuch" in capsys.readouterr().err
    assert main(["compare-training", *base, "--steps", "2000"]) == 2
    assert "1 <= n <= num_train_timesteps" in capsys.readouterr().err
    other = save_checkpoint(build_network("DDPMPrecond", ddpmpp_kwargs(8, 1, **TINY)), tmp_path / "other.safetensors")
    assert main(["compare-training", str(pair["ddpm"]), str(other), "--db", str(db)]) == 2
    assert "--ref is required unless both models were trained on digits" in capsys.readouterr().err
    edm = save_checkpoint(build_network("EDMPrecond", ddpmpp_kwargs(8, 1, **TINY)), tmp_path / "edm.safetensors")
    assert main(["compare-training", str(pair["ddpm"]), str(edm), "--ref", "digits", "--db", str(db)]) == 2
    assert "needs a discrete-time network" in capsys.readouterr().err
    assert not db.exists()
