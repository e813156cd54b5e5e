"""A tiny 8x8 network and data set for the analysis tests, and the command-line runner they share."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

TINY_NET = dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet", model_channels=8,
                channel_mult=[1, 2], num_blocks=1, attn_resolutions=[])


def build_tiny(folder: Path, n_images: int = 48) -> dict[str, Path]:
    """A randomly perturbed 4-site SongUNet (zero-initialised output layers would hide the skips) saved as a
    checkpoint, and the first ``n_images`` training digits as a uint8 .npz (resized to 8x8 on loading)."""
    from skiptune import save_checkpoint
    from skiptune.experiment.generate import to_uint8
    from skiptune.nets.presets import build_network
    from skiptune.train.data import load_dataset

    folder.mkdir(parents=True, exist_ok=True)
    net = build_network("EDMPrecond", TINY_NET)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model = save_checkpoint(net, folder / "tiny.safetensors")
    x = to_uint8(load_dataset("digits", "train").images[:n_images])
    data = folder / "data.npz"
    np.savez(data, images=x.permute(0, 2, 3, 1).numpy())
    return {"model": Path(model), "data": data}


def tiny_assets(tmp_path_factory) -> dict[str, Path]:
    """:func:`build_tiny` once per test session (in the session's base temporary folder)."""
    folder = tmp_path_factory.getbasetemp() / "analysis-tiny"
    paths = {"model": folder / "tiny.safetensors", "data": folder / "data.npz"}
    if not all(p.exists() for p in paths.values()):
        return build_tiny(folder)
    return paths


def common_args(tiny: dict[str, Path], db: Path, out: Path) -> list[str]:
    return ["--model", str(tiny["model"]), "--data", str(tiny["data"]), "--db", str(db), "--out", str(out),
            "--no-progress"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m skiptune ARGS`` in a fresh interpreter (one thread: the tensors are tiny)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "skiptune", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_rows(db: Path) -> dict[str, tuple[str, float, int]]:
    """``key -> (status, updated, attempts)`` of every generated-and-scored point in the store."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT key, status, updated, attempts, config FROM runs").fetchall()
    return {k: (s, u, a) for k, s, u, a, cfg in rows if json.loads(cfg).get("kind") == "point"}


def unit_rows(db: Path, name: str) -> dict[str, float]:
    """``key -> created`` of the stored analysis units called ``name`` (runs of kind ``analysis-unit``)."""
    with sqlite3.connect(db) as con:
        return {k: c for k, c, cfg in con.execute("SELECT key, created, config FROM runs")
                if json.loads(cfg).get("kind") == "analysis-unit" and json.loads(cfg).get("unit") == name}
