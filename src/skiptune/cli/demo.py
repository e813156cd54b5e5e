"""``skiptune demo``: Skip-Tuning end to end on the embedded default (see :mod:`skiptune.demo.run`)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run a rho sweep on the shipped digits model and report",
                       description="Sweep rho for Heun and UniPC at NFE 5, 9, 19 on the shipped model; print "
                                   "baseline vs best rule with confidence intervals; write plots, image grids and "
                                   "a markdown report to --out. Resumes an interrupted run.")
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--quick", action="store_true", help="a small setting (one sampler, one NFE, 3 rules)")
    p.add_argument("--model", default=None, help="use this model instead of the shipped one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from skiptune.demo.run import run_demo
    from skiptune.io.outputs import check_writable_folder

    check_writable_folder(args.out, "--out")

    res = run_demo(args.out, quick=args.quick, progress=not args.no_progress, model=args.model, device=args.device)
    print(f"real-vs-real floor (random real digits vs 1497 others, same sample count): FID {res.floor:.2f}")
    print(res.table)
    print(f"\nreport: {res.out / 'report.md'}")
    return 0
