"""``skiptune demo``: Skip-Tuning end to end on the embedded default (see :mod:`skiptune.demo.run`)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run a rho sweep on the shipped digits model and report",
                       description="Confirm the pre-registered rule (const:0.7) against rho = 1 for Heun and UniPC "
                                   "at NFE 5, 9, 19 on the shipped model, on fresh seeds: KID in two feature spaces "
                                   "and FID, paired t tests Holm-corrected over the table; write plots, image grids "
                                   "and a markdown report to --out. Resumes an interrupted run.")
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--quick", action="store_true", help="a small setting (Heun NFE 5, 3 seed sets of 80)")
    p.add_argument("--pilot", action="store_true", help="the pilot that sized the protocol (seeds 5000-5499)")
    p.add_argument("--model", default=None, help="use this model instead of the shipped one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from skiptune.demo.run import run_demo
    from skiptune.io.outputs import check_writable_folder

    check_writable_folder(args.out, "--out")

    res = run_demo(args.out, quick=args.quick, pilot=args.pilot, progress=not args.no_progress, model=args.model,
                   device=args.device)
    f = res.floor
    print(f"real-vs-real floor ({f['n']} random real digits vs {f['ref_n']} others, {f['draws']} draws): FID "
          f"{f['fid']['mean']:.1f}, KID class {f['kid_class']['mean']:.2g}, KID style {f['kid_style']['mean']:.2g}")
    print(res.table)
    print(f"\nreport: {res.out / 'report.md'}")
    return 0
