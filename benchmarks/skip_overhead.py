"""Forward-pass time with and without an active Skip-Tuning rule.

Prints, per network, the median time of a no_grad forward pass untouched, with a constant-per-site
rule (``layer:0.7``) and with a sigma-dependent rule (``layer:0.7*ramp:down:0.9``), measured
interleaved in one run, and their ratios. Goal: overhead <= 1%.

    python benchmarks/skip_overhead.py                # DDPM++ CIFAR-10 and ADM ImageNet-64
    python benchmarks/skip_overhead.py --quick        # tiny variants
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from skiptune import load_model, skip_tuning


def time_once(net, x, s, c) -> float:
    t0 = time.perf_counter()
    net(x, s, c)
    return time.perf_counter() - t0


def measure(name: str, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    net = load_model(name)
    r = net.img_resolution
    x = torch.randn(batch, net.img_channels, r, r)
    s = torch.full((batch,), 1.3)
    c = torch.eye(net.label_dim)[torch.arange(batch) % net.label_dim] if net.label_dim else None
    rules = {"none": None, "layer:0.7": "layer:0.7", "layer:0.7*ramp:down:0.9": "layer:0.7*ramp:down:0.9"}
    times = {k: [] for k in rules}
    with torch.no_grad():
        for _ in range(2):  # warm-up
            time_once(net, x, s, c)
        for _ in range(repeats):
            for key, rule in rules.items():  # interleaved, so drift hits all variants alike
                if rule is None:
                    times[key].append(time_once(net, x, s, c))
                else:
                    with skip_tuning(net, rule):
                        times[key].append(time_once(net, x, s, c))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny variants, few repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    args = ap.parse_args()
    nets = ["ddpmpp-tiny", "adm-tiny"] if args.quick else ["ddpmpp-cifar10", "adm-imagenet64"]
    repeats = args.repeats or (20 if args.quick else 7)
    batch = args.batch or (8 if args.quick else 2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"batch {batch}, median of {repeats} interleaved repeats")
    print(f"{'network':<18} {'none (ms)':>10} {'layer:0.7':>10} {'ratio':>7} {'+ramp':>10} {'ratio':>7}")
    for name in nets:
        m = measure(name, batch, repeats)
        base = m["none"]
        a, b = m["layer:0.7"], m["layer:0.7*ramp:down:0.9"]
        print(f"{name:<18} {base * 1e3:>10.2f} {a * 1e3:>10.2f} {a / base:>7.4f} {b * 1e3:>10.2f} {b / base:>7.4f}")


if __name__ == "__main__":
    main()
