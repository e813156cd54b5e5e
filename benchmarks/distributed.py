"""Samples per second with 1 vs N processes (torchrun, gloo on CPU / NCCL on GPUs), side by side in one run.

    python benchmarks/distributed.py [--seeds 0-511] [--nfe 9] [--batch 64] [--nproc 2]

Runs ``skiptune sample`` on the shipped demo model (or --model) as: one process with all cores'
threads, one process with one thread, and ``torchrun --nproc_per_node N`` (one thread per process,
torchrun's default). Prints wall time (with start-up) and generation time (the slowest rank), and
throughput ratios against the single process. Images are checked to be identical across the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from skiptune.sampling import parse_seeds


def run(cmd: list[str], threads: int, out: Path) -> tuple[float, float, np.ndarray]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(r.stdout + r.stderr)
    gen = json.loads((out / "config.json").read_text())["config"]["seconds"]
    return wall, gen, np.load(out / "images.npz")["images"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="src/skiptune/assets/demo-digits.safetensors")
    ap.add_argument("--seeds", default="0-511")
    ap.add_argument("--nfe", type=int, default=9)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    n = len(parse_seeds(args.seeds))
    sample = ["-m", "skiptune", "sample", "--model", args.model, "--seeds", args.seeds, "--nfe", str(args.nfe),
              "--batch", str(args.batch), "--no-pngs", "--no-progress"]
    setups = [
        (f"1 process, {cores} threads", [sys.executable, *sample], cores),
        ("1 process, 1 thread", [sys.executable, *sample], 1),
        (f"torchrun {args.nproc} processes, 1 thread each",
         [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", *sample], 1),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, cmd, threads) in enumerate(setups):
            wall, gen, imgs = run(cmd, threads, Path(tmp) / str(i))
            rows.append((name, wall, gen, imgs))
    same = all(np.array_equal(rows[1][3], r[3]) for r in rows[1:])
    print(f"{n} samples, demo model, heun NFE {args.nfe}, batch {args.batch}; machine: {cores} cores")
    print(f"{'setup':<40} {'wall s':>8} {'gen s':>8} {'samples/s (gen)':>16} {'ratio vs 1st':>13}")
    for name, wall, gen, _ in rows:
        print(f"{name:<40} {wall:8.1f} {gen:8.1f} {n / gen:16.1f} {rows[0][2] / gen:13.2f}")
    print(f"images identical between the one-thread runs: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
