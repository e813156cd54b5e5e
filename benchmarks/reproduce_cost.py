"""What reproducing the Skip-Tuning paper's tables costs: forward FLOPs, parameters, CPU time, GPU-hours.

    python benchmarks/reproduce_cost.py                      # defaults: 50,000 samples, 25 TFLOP/s
    python benchmarks/reproduce_cost.py --n 50000 --tflops 60 --seed-sets 3
    python benchmarks/reproduce_cost.py --no-timing          # FLOPs and GPU-hours only (about 15 s)

Table 1, per full-size network that skiptune has a preset for (random weights, nothing downloaded):
parameters, FLOPs of one forward pass at batch 1 and 8, and the median CPU wall time of a forward
pass under ``torch.no_grad`` after warm-up. FLOPs are counted by ``torch.utils.flop_counter.
FlopCounterMode``, which counts a multiply-add as 2 FLOPs and counts only matrix products,
convolutions and attention (normalisations, activations and other elementwise work are not counted).
They are counted on the meta device: on CPU tensors, torch's counter does not see the fused CPU
attention kernel that ``F.scaled_dot_product_attention`` dispatches to, and would miss the attention
products of the U-ViTs; on the meta device attention decomposes into counted batched matmuls. For a
U-ViT the count runs the inner network (its preconditioning converts sigma to time through numpy,
which meta tensors cannot do; that conversion is elementwise and uncounted anyway).

CPU time at batch 8 is measured only when it fits ``--budget`` seconds per network (1 warm-up and up
to ``--repeats`` runs, estimated from the batch-1 time); otherwise the table says "skipped". The number
of torch threads defaults to the cores the current load average leaves free (at least 1): on a shared
machine, more threads than free cores make every parallel region wait for a descheduled thread (ADM at
batch 1 took 16 s with 2 threads at load 3-6, 1.9 s with 1 thread).

Table 2, the networks around the sampler: the FID Inception-V3 at 299x299 (skiptune's own) and the
Stable Diffusion KL-f8 VAE decoder at 256x256 that turns U-ViT latents into images (diffusers'
AutoencoderKL with the SD configuration; skipped when diffusers is not installed).

Table 3, per row of the paper (skiptune.skip.presets) plus the sanity rows that reproduce the
checkpoint authors' own FIDs: NFE, network forward passes per image (two per evaluation under
classifier-free guidance), FLOPs per image including the VAE decoder and the Inception features,
and GPU-hours for ``--n`` samples at an assumed sustained ``--tflops`` per GPU. A paper row is two
sample sets (untuned and tuned; for Table 10, untuned and the preset's time order); ``--seed-sets`` repeats
every set (EDM reports the minimum over 3). Table 4 sums per paper table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from skiptune.nets.openai_unet import OPENAI_PRECOND_CLASSES
from skiptune.nets.presets import build_network, build_preset, preset_config
from skiptune.skip.presets import rule_presets

NETWORKS = ("ddpmpp-afhqv2-64", "adm-imagenet64", "uvit-imagenet256-large", "uvit-imagenet256-huge", "cd-imagenet64",
            "ldm-imagenet256")

#: network preset of each model family of the paper's rows; None where skiptune has no such network
FAMILY_NETWORK = {
    "edm-imagenet64": "adm-imagenet64",
    "edm-afhqv2-64": "ddpmpp-afhqv2-64",
    "uvit-imagenet256": "uvit-imagenet256-huge",
    "cd-edm-imagenet64": "cd-imagenet64",
    # Diff-Instruct's generator (no public checkpoint) has the ADM ImageNet-64 layout: estimated with it
    "di-edm-imagenet64": "~adm-imagenet64",
    "ldm-imagenet256": "ldm-imagenet256",
}

A100_PEAK = "A100 dense peaks: 312 TFLOP/s FP16/BF16 tensor, 156 TF32 tensor, 19.5 FP32"
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
              layers_per_block=2, latent_channels=4, sample_size=256)
#: LDM's VQ-f4 first stage of cin256-v2 (CompVis configs/autoencoder vq-f4: ch 128, ch_mult 1-2-4, 2 res blocks,
#: z 3 channels, 8192 codes), as diffusers' VQModel; it decodes 3x64x64 latents to 256x256
LDM_VQ = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
              up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[128, 256, 512], layers_per_block=2,
              latent_channels=3, num_vq_embeddings=8192, vq_embed_dim=3, norm_num_groups=32)


# -- measuring ---------------------------------------------------------------------------------------------------


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def network_flops(name: str, batch: int) -> int:
    """FLOPs of one forward pass of a preset network at ``batch``, counted on the meta device."""
    cls, kwargs = preset_config(name)
    with torch.device("meta"):
        net = build_network(cls, kwargs)
        r, c = net.img_resolution, net.img_channels
        x = torch.randn(batch, c, r, r)
        if cls == "UViTPrecond":
            y = torch.zeros(batch, dtype=torch.long) if net.label_dim else None
            return count_flops(lambda: net.model(x, torch.full((batch,), 500.0), y))
        if cls in OPENAI_PRECOND_CLASSES:  # the openai UNet itself (its preconditioners read a schedule table)
            unet = net.model
            y = torch.zeros(batch, dtype=torch.long) if unet.num_classes else None
            ctx = torch.randn(batch, 1, unet.context_dim) if getattr(unet, "context_dim", None) else None
            return count_flops(lambda: unet(x, torch.full((batch,), 500.0), y, context=ctx))
        labels = torch.zeros(batch, net.label_dim) if net.label_dim else None
        return count_flops(lambda: net(x, torch.full((batch,), 1.3), labels))


def inception_flops() -> tuple[int, int]:
    """(FLOPs, parameters) of the FID Inception-V3 on one 299x299 image."""
    from skiptune.metrics.inception import InceptionV3

    with torch.device("meta"):
        net = InceptionV3()
        x = torch.rand(1, 3, 299, 299)
        return count_flops(lambda: net(x)), sum(p.numel() for p in net.parameters())


def vae_decoder_flops(kind: str = "sd") -> tuple[int, int] | None:
    """(FLOPs, decoder parameters) of the SD KL-f8 decoder on one 4x32x32 latent (``sd``) or of LDM's VQ-f4
    decoder on one 3x64x64 latent (``ldm``), or None without diffusers."""
    try:
        from diffusers import AutoencoderKL, VQModel
    except ImportError:
        return None
    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE) if kind == "sd" else VQModel(**LDM_VQ)
        z = torch.randn(1, 4, 32, 32) if kind == "sd" else torch.randn(1, 3, 64, 64)
        flops = count_flops(lambda: vae.decode(z, force_not_quantize=True) if kind == "ldm" else vae.decode(z))
    params = sum(p.numel() for m in (vae.post_quant_conv, vae.decoder) for p in m.parameters())
    return flops, params


def _inputs(net, batch: int):
    r, c = net.img_resolution, net.img_channels
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, r, r, generator=g)
    sigma = torch.full((batch,), 1.3)
    labels = torch.eye(net.label_dim)[torch.arange(batch) % net.label_dim] if net.label_dim else None
    return x, sigma, labels


def time_forward(net, batch: int, warmup: int, repeats: int) -> list[float]:
    x, sigma, labels = _inputs(net, batch)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            net(x, sigma, labels)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return times


@dataclass
class NetCost:
    name: str
    params: int
    flops1: int
    flops8: int
    cpu1: float | None = None  # median seconds per forward at batch 1
    cpu8: float | None = None
    runs8: int = 0
    est8: float | None = None  # estimated seconds per forward at batch 8 when skipped


def measure_network(name: str, timing: bool, warmup: int, repeats: int, budget: float) -> NetCost:
    flops1, flops8 = network_flops(name, 1), network_flops(name, 8)
    cls, kwargs = preset_config(name)
    with torch.device("meta"):
        params = sum(p.numel() for p in build_network(cls, kwargs).parameters())
    cost = NetCost(name, params, flops1, flops8)
    if not timing:
        return cost
    net = build_preset(name)
    cost.cpu1 = statistics.median(time_forward(net, 1, warmup, repeats))
    est = 8 * cost.cpu1
    runs = min(repeats, int(budget // est) - 1)
    if runs >= 1:
        times = time_forward(net, 8, 1, runs)
        cost.cpu8, cost.runs8 = statistics.median(times), runs
    else:
        cost.est8 = est
    del net
    return cost


# -- the paper's rows --------------------------------------------------------------------------------------------


@dataclass
class Row:
    table: str
    name: str
    network: str | None  # preset name, "~preset" for an estimate, None when unsupported
    sampler: str
    nfe: int | None
    forwards_per_eval: int  # 2 under classifier-free guidance (conditional + unconditional pass)
    latent: str | None  # the decoder of a latent model's samples: "sd" (KL-f8) or "ldm" (VQ-f4)
    fid: str
    sets: int = 2
    note: str = ""
    sanity: bool = False


def paper_rows() -> list[Row]:
    rows = [
        # Sanity rows: the checkpoint authors' own settings and FIDs (a single sample set each).
        Row("2,4,5,10", "sanity edm-imagenet64", "adm-imagenet64", "edm_sde 256 steps", 511, 1, None, "1.36", 1,
            "EDM example.py: S_churn 40, S_min 0.05, S_max 50, S_noise 1.003", True),
        Row("6", "sanity edm-afhqv2-64", "ddpmpp-afhqv2-64", "heun 40 steps", 79, 1, None, "1.96", 1,
            "EDM example.py: deterministic", True),
        Row("7,10", "sanity uvit-imagenet256-huge", "uvit-imagenet256-huge", "dpm-solver++ 50", 50, 2, "sd",
            "2.29", 1, "U-ViT eval_ldm_discrete.py: cfg scale 0.4, cond and uncond passes", True),
        Row("7,10", "sanity ldm-imagenet256", "ldm-imagenet256", "ddim 250 steps", 250, 2, "ldm", "3.60", 1,
            "LDM paper Table 3: LDM-4-G, 250 DDIM steps, guidance 1.5", True),
        Row("-", "sanity uvit-imagenet256-large", "uvit-imagenet256-large", "dpm-solver 50", 50, 2, "sd",
            "3.40", 1, "U-ViT eval_ldm.py: cfg scale 0.4; not the paper's UViT (its 2.32 baseline is U-ViT-H's)",
            True),
    ]
    # Table 5 quotes EDM's own Heun at 79 NFE (FID 2.22) as the ODE limit: one untuned set.
    rows.append(Row("5", "edm-imagenet64/heun/79", "adm-imagenet64", "heun 40 steps", 79, 1, None, "2.22", 1,
                    "untuned only"))
    for p in rule_presets().values():
        table = p.source.replace("Tables ", "").replace("Table ", "").replace(" and ", "/")
        network = FAMILY_NETWORK[p.family]
        fid = f"{p.baseline_fid:g} -> {p.tuned_fid:g}" if p.baseline_fid is not None else f"{p.tuned_fid:g}"
        steps = f" {p.steps} steps" if p.steps > 1 else ""
        nfe, sampler, fwd, latent, note = p.nfe, f"{p.sampler}{steps}", 1, None, ""
        if p.family == "uvit-imagenet256":
            nfe, sampler, fwd, latent = p.steps, "dpm-solver++ (U-ViT's)", 2, "sd"
            note = "sampler and guidance assumed to be U-ViT's own (the paper gives steps only)"
        elif p.family == "ldm-imagenet256":
            nfe, sampler, fwd, latent = p.steps, f"ddim{steps}", 2, "ldm"
            note = "DDIM with guidance 1.5 assumed (skiptune reproduce's reading; the paper gives steps only)"
        elif p.nfe is None and p.family == "edm-imagenet64":
            nfe, sampler, note = 2 * p.steps - 1, f"heun {p.steps} steps (assumed)", "same FID as the Table 4 Heun row"
        if p.schedule != "layer":
            fid = f"{p.tuned_fid:g} ({p.schedule})"
        rows.append(Row(table, p.name, network, sampler, nfe, fwd, latent, fid, 2, note))
    return rows


# -- printing ----------------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]], align: str) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align, strict=True))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000, help="samples per sample set (default 50,000)")
    ap.add_argument("--tflops", type=float, default=25.0,
                    help="assumed sustained throughput per GPU in TFLOP/s (default 25, about 8%% of an A100's "
                         "312 TFLOP/s dense FP16/BF16 tensor peak)")
    ap.add_argument("--seed-sets", type=int, default=1, help="repeat every sample set this many times (EDM: 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: the cores left free by the current load average, at least 1; "
                         "on a shared machine more threads than free cores make every parallel region wait)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed forward passes before timing at batch 1")
    ap.add_argument("--repeats", type=int, default=3, help="timed forward passes (median)")
    ap.add_argument("--budget", type=float, default=35.0,
                    help="seconds per network allowed for timing at batch 8 (else skipped)")
    ap.add_argument("--no-timing", action="store_true", help="skip CPU timing")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or 1
    torch.set_num_threads(args.threads or max(1, min(cores, cores - round(load))))
    t_start = time.perf_counter()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {load:.2f} at start; FLOPs by torch.utils.flop_counter.FlopCounterMode on the meta device "
          "(1 multiply-add = 2 FLOPs; matmul, conv and attention only)")

    nets = {name: measure_network(name, not args.no_timing, args.warmup, args.repeats, args.budget)
            for name in NETWORKS}
    rows1 = []
    for c in nets.values():
        b8 = (f"{fmt_ms(c.cpu8)} (n={c.runs8})" if c.cpu8 is not None
              else f"skipped (est. {c.est8:,.0f} s)" if c.est8 is not None else "-")
        rate = f"{c.flops1 / c.cpu1 / 1e9:,.0f}" if c.cpu1 else "-"
        rows1.append([c.name, f"{c.params / 1e6:,.1f}", f"{c.flops1 / 1e9:,.1f}", f"{c.flops8 / 1e9:,.1f}",
                      f"{c.flops8 / c.flops1:.2f}", fmt_ms(c.cpu1), b8, rate])
    print(f"\nTable 1. One forward pass (random weights; CPU: median of {args.repeats} after {args.warmup} warm-up "
          "at batch 1, median of n after 1 warm-up at batch 8)")
    print(table(["network", "params (M)", "GFLOP b1", "GFLOP b8", "b8/b1", "CPU ms b1", "CPU ms b8", "CPU GFLOP/s b1"],
                rows1, "lrrrrrrr"))

    inc_flops, inc_params = inception_flops()
    decoders = {"sd": vae_decoder_flops("sd"), "ldm": vae_decoder_flops("ldm")}
    rows2 = [["Inception-V3 (FID, pool3)", "1 image 299x299", f"{inc_params / 1e6:,.1f}", f"{inc_flops / 1e9:,.1f}"]]
    for kind, name, shape in (("sd", "SD KL-f8 VAE decoder", "1 latent 4x32x32 -> 256x256"),
                              ("ldm", "LDM VQ-f4 decoder (cin256-v2)", "1 latent 3x64x64 -> 256x256")):
        d = decoders[kind]
        rows2.append([name, shape, f"{d[1] / 1e6:,.1f}" if d else "-", f"{d[0] / 1e9:,.1f}" if d else
                      "n/a (no diffusers)"])
    print("\nTable 2. Networks around the sampler (FLOPs per image)")
    print(table(["network", "input", "params (M)", "GFLOP"], rows2, "llrr"))
    decoder_flops = {kind: d[0] if d else 0 for kind, d in decoders.items()}

    def gpu_hours(flops: float) -> float:
        return flops / (args.tflops * 1e12) / 3600

    rows3, totals = [], {}
    for r in paper_rows():
        if r.network is None or r.nfe is None:
            rows3.append([r.table, r.name, "-", r.sampler, "-", "-", "-", str(r.sets * args.seed_sets), "-", "-",
                          r.fid])
            continue
        net = nets[r.network.lstrip("~")]
        forwards = r.nfe * r.forwards_per_eval
        per_image = forwards * net.flops1 + (decoder_flops[r.latent] if r.latent else 0) + inc_flops
        sets = r.sets * args.seed_sets
        total = per_image * args.n * sets
        key = f"sanity ({r.name.removeprefix('sanity ')})" if r.sanity else r.table.split("/")[0]
        totals.setdefault(key, [0.0, 0.0])
        totals[key][0] += total
        totals[key][1] += gpu_hours(total)
        rows3.append([r.table, r.name, r.network, r.sampler, str(r.nfe), str(forwards), f"{per_image / 1e12:,.2f}",
                      str(sets), f"{total / 1e15:,.0f}", f"{gpu_hours(total):,.2f}", r.fid])
    print(f"\nTable 3. GPU cost per row: {args.n:,} samples per set, {args.tflops:g} TFLOP/s sustained per GPU assumed "
          f"({A100_PEAK}); TFLOP/img = forwards x network + decoder (latent rows) + Inception")
    print(table(["table", "row", "network", "sampler", "NFE", "fwd/img", "TFLOP/img", "sets", "PFLOP", "GPU-h",
                 "paper FID"], rows3, "llllrrrrrrl"))
    for r in paper_rows():
        if r.note:
            print(f"  {r.name}: {r.note}")

    order = sorted(totals, key=lambda t: (not t.startswith("sanity"), int(t) if t.isdigit() else 0, t))
    rows4 = [[t, f"{totals[t][0] / 1e15:,.0f}", f"{totals[t][1]:,.1f}", f"{totals[t][1] / 8:,.1f}"] for t in order]
    print(f"\nTable 4. Sum per paper table (rows with a network; {args.tflops:g} TFLOP/s per GPU)")
    print(table(["table", "PFLOP", "GPU-h", "h on 8 GPUs"], rows4, "lrrr"))

    # What EDM's own README runtimes imply (python example.py: 64 images per dataset, best sampler).
    adm, afhq = nets["adm-imagenet64"].flops1, nets["ddpmpp-afhqv2-64"].flops1
    print("\nCalibration: the EDM README's example.py runtimes (64 images; ImageNet 511 NFE ~5 min, AFHQv2 79 NFE "
          f"~28 s on an unnamed GPU, loading included) imply {64 * 511 * adm / 300 / 1e12:.0f} and "
          f"{64 * 79 * afhq / 28 / 1e12:.0f} TFLOP/s effective")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n(run time {time.perf_counter() - t_start:.0f} s, load average {load:.2f} at the end)")


if __name__ == "__main__":
    main()
