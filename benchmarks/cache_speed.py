"""Feature caching on the shipped demo model: speed-up, cost and quality, alone and with Skip-Tuning on top.

Pre-registered before any of its seeds was sampled (seeds 30000 and up are used by nothing else):

- cells: Heun, UniPC and DPM-Solver++(2M) at NFE 19 and 39, each sampler at its reference step convention;
- policies: none, ``encoder:2`` (Faster Diffusion, key every 2nd evaluation), ``deepcache:2`` and
  ``deepcache:3`` (branch 0: the partial pass reruns the outermost skip only);
- quality: unbiased KID (units of 1e-3) against the 1437 training digits in the demo's two feature spaces
  (``class`` and ``style``, :mod:`skiptune.demo.protocol`), FID in the class features beside it; 5 seed sets
  of 100 (30000-30099, ...), every variant on the same seeds;
- tests (two-sided paired t over the seed sets, Holm over each family):
  (A) caching: KID(policy) - KID(none) for every cell, policy and space (36 tests);
  (B) Skip-Tuning on top: KID(policy + const:0.7) - KID(policy) for every cell, cached policy and space
  (36 tests); const:0.7 is the demo's pre-registered rule, not re-tuned here.
- speed: wall clock of whole trajectories (batch 100, the same seeds for every policy, policies interleaved,
  median of ``--repeats``), and the full-network-equivalent cost full + partial x (time of a partial call /
  time of a full call) timed call by call; beside it the FLOP ratio of a partial pass to a full one
  (``torch.utils.flop_counter``), which is what a GPU run at large batch approaches.

The goal of the issue: a speed-up of at least 1.8x with quality inside the uncached sampler's interval at
NFE 39. Results go to a store (resumable; reruns read it) and a table is printed.

    python benchmarks/cache_speed.py --out bench-cache          # about 25 minutes on 2 CPU cores
    python benchmarks/cache_speed.py --out bench-cache --quick  # 1 cell, 2 sets of 50: a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from skiptune import load_model
from skiptune.core.stats import Estimate, paired_difference, t_interval
from skiptune.demo.assets import classifier_extractor, load_classifier
from skiptune.demo.protocol import SPACES, classifier_spaces, holm_tests, reference_scale, scaled
from skiptune.demo.run import DEMO_METRICS, score_demo
from skiptune.experiment import ModelRef, Point, SamplingSpec, Scorer, load_reference, open_store, to_uint8
from skiptune.experiment.generate import generate
from skiptune.experiment.scoring import outcome
from skiptune.runs.sweep import seed_sets
from skiptune.skip import CachePolicy, feature_cache
from skiptune.train.data import load_dataset

CELLS = [(s, n) for s in ("heun", "unipc", "dpmpp_2m") for n in (19, 39)]
POLICIES = ["none", "encoder:2", "deepcache:2", "deepcache:3"]
RULE = "const:0.7"
FIRST_SEED, N, SETS = 30000, 100, 5


def flop_ratio(net, policy: str) -> float:
    """FLOPs of a partial pass over those of a full one (batch 1, one key call then one partial call)."""
    x = torch.randn(1, net.img_channels, net.img_resolution, net.img_resolution)
    sigma = torch.tensor([2.0])
    counts = []
    only_first_key = replace(CachePolicy.parse(policy), interval=None, keys=(0,))
    with torch.no_grad(), feature_cache(net, only_first_key):
        for _ in range(2):
            counter = FlopCounterMode(display=False)
            with counter:
                net(x, sigma)
            counts.append(counter.get_total_flops())
    return counts[1] / counts[0]


def time_trajectories(net, spec: SamplingSpec, seeds: str, repeats: int) -> dict[str, dict]:
    """Median wall clock of one batch-100 trajectory per policy (interleaved), and the timed partial cost."""
    times: dict[str, list[float]] = {p: [] for p in POLICIES}
    cost: dict[str, dict] = {}
    for _ in range(repeats):
        for p in POLICIES:
            t0 = time.perf_counter()
            generate(net, seeds, spec, batch_size=N, cache=None if p == "none" else p)
            times[p].append(time.perf_counter() - t0)
    for p in POLICIES[1:]:
        g = generate(net, seeds, spec, batch_size=N, cache=p, time_cache=True)
        cost[p] = g.cache
    out = {}
    for p in POLICIES:
        rec = cost.get(p)
        equivalent = spec.resolved_nfe if rec is None else (
            rec["full_per_sample"] + rec["partial_per_sample"] * rec["partial_cost"])
        out[p] = {"seconds": statistics.median(times[p]), "equivalent": equivalent,
                  "full": spec.resolved_nfe if rec is None else rec["full_per_sample"]}
    return out


def fmt(e: Estimate) -> str:
    return f"{e.mean:.2f} [{e.ci_low:.2f}, {e.ci_high:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-cache")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats per policy (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="Heun 19 only, 2 sets of 50 (smoke run)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cells, n, sets = (CELLS[:1], 50, 2) if args.quick else (CELLS, N, SETS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    net = load_model("demo-digits")
    ext = classifier_extractor()
    clf = load_classifier()
    scorer = Scorer(ext, load_reference("digits", ext))
    raw = classifier_spaces(clf, to_uint8(load_dataset("digits", split="train").images))
    scales = {s: reference_scale(raw[s]) for s in SPACES}
    ref_spaces = scaled(raw, scales)
    model = ModelRef.of_network(net, "demo-digits")
    sets_ = seed_sets(f"{FIRST_SEED}-{FIRST_SEED + n - 1}", sets)

    flops = {p: flop_ratio(net, p) for p in POLICIES[1:]}
    print("FLOPs of a partial pass / a full one (batch 1): "
          + ", ".join(f"{p} {r:.3f}" for p, r in flops.items()), flush=True)

    values: dict[tuple, list[float]] = {}
    speed: dict[tuple, dict] = {}
    t_start = time.perf_counter()
    with open_store(out / "results.sqlite") as store:
        for s, nfe in cells:
            spec = SamplingSpec(s, nfe=nfe)
            speed[(s, nfe)] = time_trajectories(net, spec, sets_[0], args.repeats)
            for seeds in sets_:
                for p in POLICIES:
                    for rule in ("none", RULE):
                        point = Point(model, spec, rule, seeds, scorer.spec(), batch=n,
                                      cache=None if p == "none" else p)

                        def compute(_cfg, point=point):
                            return outcome(score_demo(net, point, scorer, clf, ref_spaces, scales))

                        rec = store.run_once({**point.to_config(), "demo_metrics": DEMO_METRICS}, compute)
                        for name in ("fid", *(f"kid_{sp}" for sp in SPACES)):
                            values.setdefault((s, nfe, p, rule, name), []).append(rec.metrics[name].value)
            print(f"{s} {nfe} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    est = {k: t_interval(v) for k, v in values.items()}
    fam_a = {(s, nfe, p, sp): paired_difference(est[(s, nfe, p, "none", f"kid_{sp}")],
                                                est[(s, nfe, "none", "none", f"kid_{sp}")])
             for s, nfe in cells for p in POLICIES[1:] for sp in SPACES}
    fam_b = {(s, nfe, p, sp): paired_difference(est[(s, nfe, p, RULE, f"kid_{sp}")],
                                                est[(s, nfe, p, "none", f"kid_{sp}")])
             for s, nfe in cells for p in POLICIES[1:] for sp in SPACES}
    tests_a, tests_b = holm_tests(fam_a), holm_tests(fam_b)

    lines = [f"Demo model, {sets} seed sets of {n} ({sets_[0]}, ...); KID x1e3 (mean [95% t interval]); "
             f"speed-up = median wall clock of a batch-{n} trajectory, uncached / cached; equivalent = full-network "
             "calls per sample (timed); Holm over each family of tests.", "",
             "| sampler | NFE | policy | speed-up | equivalent | full | KID class | KID style | FID | "
             "cache - none (class, Holm) | + const:0.7 - cache (class, Holm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s, nfe in cells:
        sp = speed[(s, nfe)]
        for p in POLICIES:
            def e(name, r="none", key=(s, nfe, p)):
                return est[(*key, r, name)]
            cols = [s, str(nfe), p, f"{sp['none']['seconds'] / sp[p]['seconds']:.2f}x",
                    f"{sp[p]['equivalent']:.1f}", str(sp[p]["full"]), fmt(e("kid_class")), fmt(e("kid_style")),
                    f"{e('fid').mean:.2f}"]
            if p == "none":
                cols += ["", f"{paired_difference(e('kid_class', RULE), e('kid_class')).mean:+.2f} (no cache)"]
            else:
                ta, tb = tests_a[(s, nfe, p, "class")], tests_b[(s, nfe, p, "class")]
                cols += [f"{ta.diff.mean:+.2f} p={ta.p_holm:.3f} {ta.verdict()}",
                         f"{tb.diff.mean:+.2f} p={tb.p_holm:.3f} {tb.verdict()}"]
            lines.append("| " + " | ".join(cols) + " |")
    lines += ["", "Style space, Holm-adjusted verdicts (cache - none; + const:0.7 - cache):"]
    for s, nfe in cells:
        lines.append(f"- {s} {nfe}: " + "; ".join(
            f"{p}: {tests_a[(s, nfe, p, 'style')].diff.mean:+.2f} {tests_a[(s, nfe, p, 'style')].verdict()}, "
            f"{tests_b[(s, nfe, p, 'style')].diff.mean:+.2f} {tests_b[(s, nfe, p, 'style')].verdict()}"
            for p in POLICIES[1:]))
    lines += ["", "FLOPs partial / full: " + ", ".join(f"{p} {r:.3f}" for p, r in flops.items()),
              f"Run time {time.perf_counter() - t_start:.0f} s, {torch.get_num_threads()} threads."]
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
