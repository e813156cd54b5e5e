"""``skiptune analyze <name>`` (the paper's analyses) and ``skiptune report`` (all stored results in one page)."""

from __future__ import annotations

from pathlib import Path

from skiptune.cli import WEIGHTS_FLAG, check_weights, with_flags
from skiptune.core.errors import MissingFileError


def _add_common(p) -> None:
    p.add_argument("--model", default=None, metavar="PATH|PRESET",
                   help="checkpoint or preset (default: the shipped demo model)")
    p.add_argument("--trust-code", action="store_true",
                   help="UNSAFE: unpickle EDM files with Python's stock loader, executing code they contain")
    p.add_argument("--data", default="digits", help="real images: digits, shapes, a folder or an .npz (default digits)")
    p.add_argument("--features", default="digits-classifier", help="registered feature network (FID, feature DSM)")
    p.add_argument("--weights", default=None, help="weights file of the feature network")
    p.add_argument("--out", default="runs/analysis",
                   help="folder for JSON, CSV, markdown and plots (default runs/analysis)")
    p.add_argument("--db", default="runs/results.sqlite", help="results store (resume and report)")
    p.add_argument("--no-db", action="store_true", help="do not store or reuse results")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def _context(args):
    from skiptune.analysis.context import AnalysisContext

    return AnalysisContext(model=args.model, data=args.data, features=args.features, weights=args.weights,
                           out=Path(args.out), db=None if args.no_db else Path(args.db), device=args.device,
                           progress=not args.no_progress, trust_code=args.trust_code)


def register(sub) -> None:
    import importlib

    from skiptune.analysis import analysis_modules

    p = sub.add_parser("analyze", help="the paper's analyses (norms, complexity, dsm, windows, ...)",
                       description="Run one of the analyses of seed 003 (Skip-Tuning, Sec. 4 and appendices). "
                                   "Each writes JSON, CSV, a markdown table and a plot, stores its results and "
                                   "resumes if interrupted.")
    names = p.add_subparsers(dest="analysis", metavar="NAME")
    for name, mod in analysis_modules().items():
        q = names.add_parser(name, help=mod.HELP, description=(mod.__doc__ or mod.HELP).strip().splitlines()[0])
        _add_common(q)
        command = importlib.import_module(f"skiptune.cli.analyses.{name}")
        command.add_arguments(q)
        q.set_defaults(func=run_analysis, handler=command)
    p.set_defaults(func=lambda args: p.print_help() or 2)

    p = sub.add_parser("report", help="markdown report of every analysis in the results store",
                       description="Collect the tables and figures of all analyses stored in --db into one page.")
    p.add_argument("--db", default="runs/results.sqlite")
    p.add_argument("--out", default="runs/analysis",
                   help="folder for report.md and the figures (default runs/analysis)")
    p.set_defaults(func=run_report)


def run_analysis(args) -> int:
    from skiptune.analysis import record_result
    from skiptune.io.outputs import check_writable_folder
    from skiptune.report.analyses import plot_for
    from skiptune.report.tables import markdown, write_result

    check_weights(args.weights)
    check_writable_folder(args.out, "--out")
    ctx = _context(args)
    try:
        ctx.check_store()  # a store that cannot be used fails before the model and the data load
        try:
            result = args.handler.run(args, ctx)
        except MissingFileError as exc:  # e.g. a feature network's weights: the message names the flag
            raise with_flags(exc, WEIGHTS_FLAG) from None
        record_result(ctx.store, result)
        paths = write_result(result, ctx.out, plot_for(args.analysis))
    finally:
        ctx.close()
    print(markdown(result))
    for k, v in result.summary.items():
        print(f"{k}: {v}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def run_report(args) -> int:
    from skiptune.analysis import stored_results
    from skiptune.experiment import open_store
    from skiptune.io.outputs import check_writable_folder
    from skiptune.report.analyses import plot_for
    from skiptune.report.tables import markdown, write_result

    check_writable_folder(args.out, "--out")
    db = Path(args.db)
    if not db.exists():
        raise MissingFileError(f"no results store at {db}: run `skiptune analyze ...` first or pass --db")
    out = Path(args.out)
    with open_store(db, create=False) as store:
        results = stored_results(store)
    if not results:
        print(f"no analyses in {db}")
        return 1
    parts = ["# Skip-Tuning analyses", "", f"Results store: `{db}`; {len(results)} result(s).", ""]
    for i, res in enumerate(results):
        sub = out / "report-files" / f"{i:03d}"
        paths = write_result(res, sub, plot_for(res.name))
        parts += [f"## {res.name}", "", "Config: `" + ", ".join(f"{k}={v}" for k, v in res.config.items()) + "`", "",
                  markdown(res), ""]
        parts += [f"- {k}: {v}" for k, v in res.summary.items()]
        parts += [f"- {n}" for n in res.notes]
        if "png" in paths:
            parts += ["", f"![{res.name}]({paths['png'].relative_to(out)})"]
        parts.append("")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(parts) + "\n")
    print(f"wrote {out / 'report.md'} ({len(results)} analyses)")
    return 0
