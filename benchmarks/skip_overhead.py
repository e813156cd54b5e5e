"""Cost of Skip-Tuning's hooks on full-size networks, eager and compiled, and what a GPU run needs.

For each network (random weights, batch 8) one run times, interleaved so that drift hits all variants
alike, the denoiser call (``EDMDenoiser``, as a sampler makes it) on the untouched network, with a
sigma-free rule (``const:0.7``) and with a sigma-dependent rule (``layer:0.7*ramp:down:0.9``) in two
ways: with the sampler's sigma (one value for the batch, known on the host: rho is a Python number)
and with one sigma per sample (rho computed per sample with tensor operations, never read back).
It prints median times and their ratio to the untouched call, and, measured directly, the time spent
inside the hooks and the extra operations (kernel launches on a GPU) the hooks add per call: on a
shared CPU the noise between repeats is larger than the 1 % goal, the time inside the hooks is not.

With ``--compile BACKEND`` the same is measured on ``torch.compile(net, backend=BACKEND)``; compiled
hooks always take the tensor path (rho from a buffer, or computed in the graph from sigma).

Last, per network, what a GPU run needs: parameters, FLOPs per call at batch 8
(``torch.utils.flop_counter``), the encoder activations held for the skips and the largest single
activation at batch 8, in float32 and float16.

    python benchmarks/skip_overhead.py                      # adm-imagenet64, ddpmpp-afhqv2-64, eager
    python benchmarks/skip_overhead.py --quick              # 3 repeats
    python benchmarks/skip_overhead.py --compile inductor   # also compiled (slow to compile on a CPU)
    python benchmarks/skip_overhead.py --nets ddpmpp-tiny adm-tiny --batch 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from skiptune import load_model, skip_tuning
from skiptune.core.sigma import mark_uniform
from skiptune.sampling import EDMDenoiser
from skiptune.skip import skip_sites

SIGMA_RULE = "layer:0.7*ramp:down:0.9"
#: variant -> (rule, sigma kind)
VARIANTS = {"untouched": (None, "sampler"), "const:0.7": ("const:0.7", "sampler"),
            "ramp, sampler sigma": (SIGMA_RULE, "sampler"), "ramp, per-sample sigma": (SIGMA_RULE, "per-sample")}


class Inputs:
    def __init__(self, net, batch: int):
        g = torch.Generator().manual_seed(0)
        r = net.img_resolution
        self.x = torch.randn(batch, net.img_channels, r, r, generator=g)
        self.labels = torch.eye(net.label_dim)[torch.arange(batch) % net.label_dim] if net.label_dim else None
        # as the sampler passes it: one float64 sigma for the batch, marked as known on the host
        self.sampler = mark_uniform(torch.full((batch,), 1.3, dtype=torch.float64), 1.3)
        self.per_sample = torch.linspace(0.05, 20.0, batch, dtype=torch.float64)  # unknown on the host

    def call(self, den, kind: str):
        return den(self.x, self.sampler if kind == "sampler" else self.per_sample, class_labels=self.labels)


class HookTimer:
    """Wraps the hooks a skip tuning registered so that the time spent inside them is summed."""

    def __init__(self, net: torch.nn.Module, before: dict):
        self.total = 0.0
        for m in net.modules():
            for hooks in (m._forward_pre_hooks, m._forward_hooks):
                for key, fn in list(hooks.items()):
                    if (id(m), key) not in before:
                        hooks[key] = self._timed(fn)

    def _timed(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - t0
        return timed


def hook_keys(net: torch.nn.Module) -> dict:
    return {(id(m), key): None for m in net.modules() for hooks in (m._forward_pre_hooks, m._forward_hooks)
            for key in hooks}


class OpCounter(TorchDispatchMode):
    """Counts aten operations (one kernel launch each on a GPU, roughly)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def measure(net, den, inputs: Inputs, repeats: int, *, hook_time: bool) -> dict[str, dict]:
    """Median time per variant (interleaved repeats) and, eagerly, the time inside the hooks."""
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    inside: dict[str, list[float]] = {k: [] for k in VARIANTS}
    with torch.no_grad():
        for rule, kind in VARIANTS.values():  # warm-up (and compilation) of every variant, until its time settles
            with skip_tuning(net, rule):
                last = None
                for _ in range(8):  # inductor may still be building kernels in worker processes after a first call
                    t0 = time.perf_counter()
                    inputs.call(den, kind)
                    now = time.perf_counter() - t0
                    if last is not None and abs(now - last) < 0.1 * last:
                        break
                    last = now
        for _ in range(repeats):
            for key, (rule, kind) in VARIANTS.items():
                with skip_tuning(net, rule):
                    t0 = time.perf_counter()
                    inputs.call(den, kind)
                    times[key].append(time.perf_counter() - t0)
        if hook_time:
            for key, (rule, kind) in VARIANTS.items():
                before = hook_keys(net)
                with skip_tuning(net, rule):
                    timer = HookTimer(net, before)
                    for _ in range(max(1, repeats // 2)):
                        timer.total = 0.0
                        inputs.call(den, kind)
                        inside[key].append(timer.total)
    return {k: {"time": statistics.median(times[k]), "spread": (max(times[k]) - min(times[k])) / statistics.median(
        times[k]), "hooks": statistics.median(inside[k]) if inside[k] else None} for k in VARIANTS}


def extra_ops(net, den, inputs: Inputs) -> dict[str, int]:
    """aten operations per call added by the hooks (batch-independent; counted at batch 1)."""
    one = Inputs(net, 1)
    counts = {}
    with torch.no_grad():
        for key, (rule, kind) in VARIANTS.items():
            with skip_tuning(net, rule), OpCounter() as counter:
                one.call(den, kind)
            counts[key] = counter.ops
    return {k: v - counts["untouched"] for k, v in counts.items()}


def gpu_needs(net, batch: int) -> dict[str, float]:
    """Parameters, FLOPs per call, skip activations and the largest activation at ``batch`` (from a batch-1 pass)."""
    one = Inputs(net, 1)
    sizes: list[int] = []
    largest = [0]
    handles = []
    unet = net.model
    for site in skip_sites(net):
        join = unet.joins[site.name.removeprefix("dec.")]
        handles.append(join.register_forward_pre_hook(lambda m, a: sizes.append(a[1].numel())))

    class Largest(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                largest[0] = max(largest[0], out.numel())
            return out

    flops = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), flops, Largest():
            net(one.x, one.sampler.to(torch.float32), one.labels)
    finally:
        for h in handles:
            h.remove()
    return {"params": sum(p.numel() for p in net.parameters()), "flops": flops.get_total_flops() * batch,
            "skips": sum(sizes) * batch, "largest": largest[0] * batch, "sites": len(sizes)}


def fmt_ratio(m: dict, key: str) -> str:
    base = m["untouched"]["time"]
    hooks = m[key]["hooks"]
    share = f"{hooks / base * 100:6.3f}%" if hooks is not None else "      -"
    return f"{m[key]['time'] / base:7.4f} {share}"


def print_table(title: str, rows: list[tuple[str, dict, dict | None]]) -> None:
    keys = list(VARIANTS)[1:]
    print(f"\n{title}")
    print(f"{'network':<18} {'untouched':>10} {'spread':>7}  " + "  ".join(f"{k:>22}" for k in keys))
    print(f"{'':<18} {'(ms)':>10} {'':>7}  " + "  ".join(f"{'ratio  in hooks':>22}" for _ in keys))
    for name, m, ops in rows:
        spread = max(v["spread"] for v in m.values())
        cells = "  ".join(f"{fmt_ratio(m, k):>22}" for k in keys)
        print(f"{name:<18} {m['untouched']['time'] * 1e3:>10.1f} {spread * 100:>6.1f}%  {cells}")
        if ops is not None:
            print(f"{'  extra ops/call':<18} {'':>10} {'':>7}  " + "  ".join(f"{ops[k]:>22d}" for k in keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=["adm-imagenet64", "ddpmpp-afhqv2-64"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 7, --quick 3)")
    ap.add_argument("--quick", action="store_true", help="3 repeats")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--compile", default=None, metavar="BACKEND",
                    help="also measure torch.compile(net, backend=BACKEND), e.g. inductor or aot_eager")
    ap.add_argument("--compile-nets", nargs="+", default=None, metavar="NET",
                    help="the networks to compile (default: all of --nets)")
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, batch {args.batch}, "
          f"median of {repeats} interleaved repeats, random weights")
    print(f"rules: const:0.7 (sigma-free) and {SIGMA_RULE} (sigma-dependent); 'spread' = (max - min) / median of "
          "the repeats, the noise floor of the ratios; 'in hooks' = time inside the hooks / untouched time")
    eager_rows, compiled_rows, needs = [], [], {}
    for name in args.nets:
        torch.manual_seed(0)
        net = load_model(name).eval()
        den = EDMDenoiser(net)
        inputs = Inputs(net, args.batch)
        eager_rows.append((name, measure(net, den, inputs, repeats, hook_time=True), extra_ops(net, den, inputs)))
        needs[name] = gpu_needs(net, args.batch)
        if args.compile and name in (args.compile_nets or args.nets):
            torch._dynamo.reset()
            cden = EDMDenoiser(torch.compile(net, backend=args.compile))
            t0 = time.perf_counter()
            m = measure(net, cden, inputs, repeats, hook_time=False)
            compiled_rows.append((name, m, None))
            print(f"[{name}: compiled with {args.compile} (3 graphs: untouched, sigma-free, sigma-dependent) and "
                  f"measured in {time.perf_counter() - t0:.0f} s]", flush=True)
        elif args.compile:
            print(f"[{name}: not compiled (not in --compile-nets)]", flush=True)
        del net, den
    print_table("eager", eager_rows)
    if args.compile:
        print_table(f"torch.compile, backend {args.compile} (hooks inside the graph; 'in hooks' not measurable)",
                    compiled_rows)
    else:
        print("\ntorch.compile: skipped (pass --compile inductor to measure it). On this 2-core CPU inductor needs "
              "minutes per graph for these networks and every variant (untouched, sigma-free, sigma-dependent) is "
              "its own graph; backends that do not generate code (eager, aot_eager) run the same kernels as eager "
              "mode and measure nothing new. Graph breaks and recompiles are checked in "
              "tests/test_hooks_gpu_grade.py.")
    print(f"\nwhat a GPU run needs at batch {args.batch} (inference, no_grad)")
    print(f"{'network':<18} {'params':>9} {'weights fp32/fp16':>18} {'GFLOP/call':>11} {'skip sites':>10} "
          f"{'skips fp32/fp16':>16} {'largest act. fp32':>18}")
    gib, mib = 2**30, 2**20
    for name, n in needs.items():
        weights = f"{n['params'] * 4 / gib:.2f}/{n['params'] * 2 / gib:.2f} GiB"
        skips = f"{n['skips'] * 4 / mib:.0f}/{n['skips'] * 2 / mib:.0f} MiB"
        print(f"{name:<18} {n['params'] / 1e6:>8.1f}M {weights:>18} {n['flops'] / 1e9:>11.0f} {n['sites']:>10d} "
              f"{skips:>16} {n['largest'] * 4 / mib:>14.0f} MiB")
    print("(memory of one call = weights + the skips held for the decoder + a few of the largest activations; "
          "time on a GPU = GFLOP/call / its sustained FLOP/s, e.g. 100 GFLOP at 50 TFLOP/s is 2 ms; each extra op "
          "per call is one small kernel launch, a few microseconds)")


if __name__ == "__main__":
    main()
