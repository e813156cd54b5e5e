"""Automatic rho search against the full grid, on synthetic FID-like objectives with a known minimum.

Each problem instance is a noisy U-shaped curve in rho_bottom, asymmetric like the FID curves of
seed 003 (Fig. 4):

    F(rho, n, s) = g(rho) + beta / n + sigma / sqrt(n) * (sqrt(c) * Z(n, s) + sqrt(1 - c) * Z(rho, n, s))
    g(rho) = f_opt + a_side * d^2 + q * d^4,   d = rho - rho_opt,   a_side = a_left (d < 0) or a_right

with rho_opt uniform in [0.5, 1.5], Z standard normal draws fixed by their arguments (seed set s
gives the same shared draw Z(n, s) to every rho: common random numbers, correlation c), and beta/n
the finite-sample bias of FID. The noise level is set relative to the curvature at the lattice
step: sigma / sqrt(N) = kappa * a * step^2, so kappa = 1 means that at the full sample count N one
grid step away from the optimum costs as much as one noise std.

Reference: the full grid at the finest step (0.05 over [0.5, 1.5]: 21 points) with N samples at
every point, seed set 0 (with ``--select-sets S``: the mean over seed sets 0..S-1 at every point,
and the search selects on the same S sets). The search (skiptune.runs.search.search_rho with its defaults) is compared
with it on the same objective: |rho_search - rho_grid|, the share within 0.02 (the goal: within
0.02 using at most 40% of the grid's samples), the budget ratio (selection stages only, and with
the 3-seed-set estimate that the grid does not provide), and both methods' distance to the true
optimum and true regret g(rho) - g(rho_opt).

    python benchmarks/search.py                 # 300 instances per noise level
    python benchmarks/search.py --instances 50  # quicker
    python benchmarks/search.py --select-sets 3 # against a 3-seed-set grid
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from skiptune.runs.search import full_grid, search_rho

LO, HI, STEP = 0.5, 1.5, 0.05


class Problem:
    """One random FID-like objective; ``g`` is its noiseless curve, ``rho_opt`` its minimiser."""

    def __init__(self, seed: int, kappa: float, n_max: int, shared: float = 0.8):
        rng = np.random.default_rng([20240613, seed])
        self.seed = seed
        self.rho_opt = float(rng.uniform(LO, HI))
        self.f_opt = float(rng.uniform(2.0, 20.0))
        a = self.f_opt * float(rng.uniform(2.0, 20.0))
        ratio = float(rng.uniform(0.5, 2.0))
        self.a_left, self.a_right = a * math.sqrt(ratio), a / math.sqrt(ratio)
        self.q = a * float(rng.uniform(0.0, 4.0))
        self.beta = self.f_opt * float(rng.uniform(0.0, 50.0))
        # noise std at n samples is sigma / sqrt(n); at n_max it is kappa * (smaller curvature) * step^2
        self.sigma = kappa * min(self.a_left, self.a_right) * STEP**2 * math.sqrt(n_max)
        self.shared = shared

    def g(self, rho: float) -> float:
        d = rho - self.rho_opt
        return self.f_opt + (self.a_left if d < 0 else self.a_right) * d * d + self.q * d**4

    def __call__(self, rho: float, n: int, seed_set: int) -> float:
        z_common = np.random.default_rng([self.seed, n, seed_set]).standard_normal()
        z_own = np.random.default_rng([self.seed, n, seed_set, int(round(rho * 1e6))]).standard_normal()
        noise = math.sqrt(self.shared) * z_common + math.sqrt(1 - self.shared) * z_own
        return self.g(rho) + self.beta / n + self.sigma / math.sqrt(n) * noise


def run_level(kappa: float, shared: float, instances: int, n_max: int, select_sets: int = 1) -> dict:
    rows = []
    for i in range(instances):
        prob = Problem(i, kappa, n_max, shared)
        grid = full_grid(prob, n_samples=n_max, lo=LO, hi=HI, step=STEP, seed_sets=select_sets)
        res = search_rho(prob, n_max=n_max, lo=LO, hi=HI, step=STEP, select_sets=select_sets)
        selection = sum(e.n_samples for e in res.trace if e.stage != "estimate")
        rows.append({
            "diff": abs(res.rho - grid.rho),
            "sel_ratio": selection / grid.budget,
            "tot_ratio": res.budget / grid.budget,
            "err_search": abs(res.rho - prob.rho_opt),
            "err_grid": abs(grid.rho - prob.rho_opt),
            "regret_search": prob.g(res.rho) - prob.g(prob.rho_opt),
            "regret_grid": prob.g(grid.rho) - prob.g(prob.rho_opt),
        })

    def col(name: str) -> list[float]:
        return [r[name] for r in rows]

    diffs = sorted(col("diff"))
    return {
        "kappa": kappa,
        "shared": shared,
        "n": instances,
        "diff_median": statistics.median(diffs),
        "diff_p90": diffs[min(len(diffs) - 1, int(math.ceil(0.9 * len(diffs))) - 1)],
        "diff_max": diffs[-1],
        "within": sum(d <= 0.02 + 1e-9 for d in diffs) / len(diffs),
        "sel_mean": statistics.fmean(col("sel_ratio")),
        "sel_max": max(col("sel_ratio")),
        "tot_mean": statistics.fmean(col("tot_ratio")),
        "err_search": statistics.median(col("err_search")),
        "err_grid": statistics.median(col("err_grid")),
        "regret_search": statistics.fmean(col("regret_search")),
        "regret_grid": statistics.fmean(col("regret_grid")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=300, help="random problems per noise level")
    ap.add_argument("--n-max", type=int, default=1000, help="samples per grid point (N)")
    ap.add_argument("--kappa", type=float, nargs="+", default=[0.25, 1.0, 2.0, 4.0, 8.0],
                    help="noise std at N in units of (curvature * step^2)")
    ap.add_argument("--shared", type=float, nargs="+", default=[0.8, 0.0],
                    help="correlation of the noise between rho values on the same seeds")
    ap.add_argument("--select-sets", type=int, default=1, help="seed sets of the grid and of the final rung")
    args = ap.parse_args()
    t0 = time.perf_counter()
    print(f"full grid: {LO}..{HI} step {STEP} ({round((HI - LO) / STEP) + 1} points) x N = {args.n_max} samples "
          f"x {args.select_sets} seed set(s), {args.instances} instances per noise level; search_rho defaults, "
          f"select_sets={args.select_sets}")
    print()
    head = (f"{'c':>3} {'kappa':>5} {'inst':>5} | {'|d| med':>7} {'p90':>5} {'max':>5} {'<=0.02':>7} | "
            f"{'budget sel':>10} {'max':>5} {'+est':>5} | {'|err| srch':>10} {'grid':>5} | "
            f"{'regret srch':>11} {'grid':>7}")
    print(head)
    print("-" * len(head))
    for shared in args.shared:
        for kappa in args.kappa:
            r = run_level(kappa, shared, args.instances, args.n_max, args.select_sets)
            print(f"{r['shared']:>3g} {r['kappa']:>5g} {r['n']:>5d} | {r['diff_median']:>7.3f} {r['diff_p90']:>5.2f} "
                  f"{r['diff_max']:>5.2f} {r['within']:>7.1%} | {r['sel_mean']:>10.1%} {r['sel_max']:>5.0%} "
                  f"{r['tot_mean']:>5.0%} | {r['err_search']:>10.3f} {r['err_grid']:>5.3f} | "
                  f"{r['regret_search']:>11.4f} {r['regret_grid']:>7.4f}")
    print()
    print("c: noise correlation between rho values on the same seeds; kappa: noise std at N / (curvature * step^2);")
    print("|d|: |rho_search - rho_grid|; <=0.02: share of instances within 0.02 of the grid optimum;")
    print("budget sel: samples of the selection stages / grid samples (mean, max); +est: with the 3-seed-set estimate;")
    print("|err|: median |rho - rho_opt|; regret: mean g(rho) - g(rho_opt) of the noiseless curve.")
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
