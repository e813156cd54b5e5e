"""Sampler benchmark: accuracy against the exact ODE solution, and overhead on a real network.

    python benchmarks/samplers.py [--quick] [--threads N] [--kdiff]

Table 1: RMS error against the exact probability-flow ODE solution (Gaussian-mixture oracle, 2-D,
256 samples from sigma_max = 80) for each sampler at NFE 5, 9, 19, 39 on EDM grids (rho = 7),
(a) ending at sigma = 0 (``end="zero"``, EDM's convention and Heun's default) and (b) ending at
sigma_min = 0.002 with no final step (``end="sigma_min"``, the official UniPC / DPM-Solver and
zju-pi/diff-sampler convention, NFE = number of steps: the default of the multistep samplers).
Table 2: wall time / (NFE x single denoiser time) on a real conv network (``skiptune.nets`` preset
``ddpmpp-tiny`` when available, else a small conv net defined here), under ``torch.no_grad``. The
goal is <= 1.03 at NFE 9.
Table 3 (``--kdiff``, optional): max |difference| to k-diffusion's euler / heun / dpmpp_2m on the same
denoiser and sigmas; k-diffusion is never a dependency. Its package ``__init__`` imports skimage and
its ``utils`` torchvision, neither used by ``k_diffusion.sampling``, so this path loads the sampling
module alone and stubs a missing ``torchvision`` module. Run it with an interpreter that can import
k_diffusion (e.g. a side venv).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import types

import torch
from torch import nn

from skiptune.sampling import (
    SAMPLERS,
    EDMDenoiser,
    GaussianMixture,
    SeedNoise,
    edm_sigmas,
    nfe_for_steps,
    steps_for_nfe,
)

NFES = (5, 9, 19, 39)
MIX = GaussianMixture([0.5, 0.3, 0.2], [[-1.5, 0.5], [1.0, 1.2], [0.8, -1.4]], [0.3, 0.5, 0.7])
CONFIGS: list[tuple[str, str, dict]] = [
    ("euler", "euler", {}),
    ("heun", "heun", {}),
    ("ddim", "ddim", {}),
    ("dpmpp_2m", "dpmpp_2m", {}),
    ("dpmpp_3m", "dpmpp_3m", {}),
    ("dpmpp_3m_order3", "dpmpp_3m_order3", {}),
    ("unipc3-bh1", "unipc", {"order": 3, "variant": "bh1"}),
    ("unipc3-bh2", "unipc", {"order": 3, "variant": "bh2"}),
    ("unipc2-bh2", "unipc", {"order": 2, "variant": "bh2"}),
    ("deis3", "deis", {"order": 3}),
    ("ipndm4", "ipndm", {"order": 4}),
]


def fmt_row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print(fmt_row(header, widths))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt_row(r, widths))


# ---------------------------------------------------------------------------------------------
# Accuracy on the oracle


def accuracy_tables(n_samples: int) -> None:
    x_t = SeedNoise(range(n_samples), dtype=torch.float64).randn([2]) * 80.0
    exact0 = MIX.ode_solve(x_t, 80.0, 0.0)
    exact_min = MIX.ode_solve(x_t, 80.0, 0.002)
    rows_a, rows_b = [], []
    for label, name, opts in CONFIGS:
        row_a, row_b = [label], [label]
        for nfe in NFES:
            steps = steps_for_nfe(name, nfe)
            out = SAMPLERS[name](MIX, x_t, edm_sigmas(steps), **opts)
            row_a.append(f"{float(((out - exact0) ** 2).mean().sqrt()):.2e}")
            try:
                steps = steps_for_nfe(name, nfe, final_zero=False)
            except ValueError:
                row_b.append("n/a")
                continue
            out = SAMPLERS[name](MIX, x_t, edm_sigmas(steps + 1, append_zero=False), **opts)
            row_b.append(f"{float(((out - exact_min) ** 2).mean().sqrt()):.2e}")
        rows_a.append(row_a)
        rows_b.append(row_b)
    header = ["sampler", *[f"NFE {n}" for n in NFES]]
    print_table(
        f"(a) RMS error vs exact ODE solution at sigma=0, EDM grid ending at 0, end=zero ({n_samples} samples)",
        header, rows_a
    )
    print_table(
        "(b) vs the solution at sigma_min, grid ending at sigma_min=0.002 without a final step, end=sigma_min "
        "(official UniPC/DPM-Solver and diff-sampler; Heun needs an even NFE)",
        header,
        rows_b,
    )


# ---------------------------------------------------------------------------------------------
# Overhead on a real network


class SmallConvNet(nn.Module):
    """A small EDM-preconditioned conv denoiser (fallback when skiptune.nets is unavailable)."""

    def __init__(self, ch: int = 64):
        super().__init__()
        self.inp = nn.Conv2d(3, ch, 3, padding=1)
        self.body = nn.Sequential(
            *[m for _ in range(4) for m in (nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))]
        )
        self.out = nn.Conv2d(ch, 3, 3, padding=1)
        self.emb = nn.Linear(1, ch)

    def forward(self, x, sigma, class_labels=None):
        s = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        c_in, c_skip, c_out = 1 / (s**2 + 0.25).sqrt(), 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25).sqrt()
        h = self.inp(c_in * x) + self.emb(s.log().reshape(-1, 1) / 4)[:, :, None, None]
        return c_skip * x + c_out * self.out(self.body(h))


def make_network() -> tuple[str, nn.Module, tuple[int, ...]]:
    try:
        from skiptune.nets import build_preset

        net = build_preset("ddpmpp-tiny")
        return (
            "skiptune.nets preset ddpmpp-tiny (EDMPrecond + SongUNet)",
            net,
            (3, net.img_resolution, net.img_resolution),
        )
    except Exception as exc:  # noqa: BLE001 - the fallback is the point
        print(f"(skiptune.nets unavailable: {exc!r}; using a small conv net)")
        return "small conv net (benchmark fallback)", SmallConvNet().eval(), (3, 32, 32)


class Timed:
    """Wraps a denoiser and accumulates the wall time spent inside it."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0
        self.input_dtype = getattr(inner, "input_dtype", None)

    def __call__(self, x, sigma, **kw):
        t0 = time.perf_counter()
        out = self.inner(x, sigma, **kw)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def overhead_table(batch: int, repeats: int, nfes: tuple[int, ...]) -> None:
    """Three views of the same quantity, because a shared CPU makes wall times of separate runs noisy:
    (1) best sampler run / (NFE x best single call); (2) within one run, total time / time inside the
    denoiser; (3) the sampler's own cost per NFE measured with a free denoiser (x -> 0.5 x), and the
    ratio it implies, 1 + overhead / single call."""
    desc, net, shape = make_network()
    den = EDMDenoiser(net)
    noise = SeedNoise(range(batch))
    x = noise.randn(shape).to(torch.float64) * 80.0
    x_in = x.to(den.input_dtype)
    sig = torch.full((batch,), 2.0, dtype=torch.float64)

    def free(x, sigma, **_):
        return 0.5 * x

    rows = []
    with torch.no_grad():
        den(x_in, sig)  # warm-up
        single = best(lambda: den(x_in, sig), repeats * 2)
        for label, name, opts in [*CONFIGS, ("edm_sde", "edm_sde", {"S_churn": 40.0})]:
            row = [label]
            for nfe in nfes:
                steps = steps_for_nfe(name, nfe)
                sigmas = edm_sigmas(steps)
                assert nfe_for_steps(name, steps) == nfe
                timed = Timed(den)
                runs = []
                for _ in range(repeats):
                    timed.seconds = 0.0
                    t0 = time.perf_counter()
                    SAMPLERS[name](timed, x, sigmas, noise=noise, **opts)
                    runs.append((time.perf_counter() - t0, timed.seconds))
                total, inside = min(runs)
                free_cost = best(lambda: SAMPLERS[name](free, x, sigmas, noise=noise, **opts), 20)  # noqa: B023
                per_nfe = free_cost / nfe
                row.append(f"{total / (nfe * single):.3f} {total / inside:.3f} {1 + per_nfe / single:.4f}")
            rows.append(row)
    print_table(
        f"Time / (NFE x denoiser time): {desc}, batch {batch}, {torch.get_num_threads()} thread(s), single call "
        f"{single * 1e3:.1f} ms; per cell: (1) best run / (NFE x best call), (2) in-run total / time in denoiser, "
        f"(3) 1 + sampler cost per NFE (free denoiser) / call",
        ["sampler", *[f"NFE {n}: (1) (2) (3)" for n in nfes]],
        rows,
    )
    free_rows = []
    for label, name, opts in CONFIGS:
        sigmas = edm_sigmas(steps_for_nfe(name, 9))
        cost = best(lambda: SAMPLERS[name](free, x, sigmas, noise=noise, **opts), 20)  # noqa: B023
        free_rows.append([label, f"{cost / 9 * 1e6:.0f}"])
    print_table(
        f"Sampler cost per NFE with a free denoiser, x of shape {[batch, *shape]} (microseconds)",
        ["sampler", "us / NFE at NFE 9"],
        free_rows,
    )


# ---------------------------------------------------------------------------------------------
# Optional agreement with k-diffusion


def load_kdiffusion_sampling():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.submodule_search_locations is None:
        return None
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("k_diffusion", pkg)
    if importlib.util.find_spec("torchvision") is None:  # only k_diffusion.utils imports it, unused here
        tv, tr, fn = (
            types.ModuleType(n) for n in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
        )
        tv.transforms, tr.functional = tr, fn
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn})
    import k_diffusion.sampling as ks

    return ks


def kdiff_table() -> None:
    try:
        ks = load_kdiffusion_sampling()
    except Exception as exc:  # noqa: BLE001
        print(f"\nk-diffusion agreement: skipped ({exc!r})")
        return
    if ks is None:
        print("\nk-diffusion agreement: skipped (k_diffusion not importable by this interpreter)")
        return
    x_t = SeedNoise(range(64), dtype=torch.float64).randn([2]) * 80.0
    pairs = [
        ("euler", {}, ks.sample_euler),
        ("heun", {}, ks.sample_heun),
        ("dpmpp_2m", {"lower_order_final": False}, ks.sample_dpmpp_2m),
    ]
    rows = []
    for name, opts, kfn in pairs:
        row = [name]
        for nfe in NFES:
            steps = steps_for_nfe(name, nfe)
            sigmas = edm_sigmas(steps)
            ours = SAMPLERS[name](MIX, x_t, sigmas, **opts)
            theirs = kfn(MIX, x_t.clone(), sigmas, disable=True)
            row.append(f"{float((ours - theirs).abs().max()):.1e}")
        rows.append(row)
    print_table(
        "k-diffusion agreement (max |ours - k-diffusion|, float64, same oracle denoiser and EDM sigmas; "
        "dpmpp_2m with lower_order_final=False, k-diffusion's rule)",
        ["sampler", *[f"NFE {n}" for n in NFES]],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kdiff", action="store_true", help="also compare with k-diffusion if importable")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    accuracy_tables(64 if args.quick else 256)
    overhead_table(args.batch, 3 if args.quick else 5, (5, 9) if args.quick else NFES)
    if args.kdiff:
        kdiff_table()


if __name__ == "__main__":
    main()
