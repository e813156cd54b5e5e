"""Command-line options shared by the FID analyses (windows, order, stochastic) and the setup they build."""

from __future__ import annotations

from skiptune.analysis.context import AnalysisContext
from skiptune.analysis.scoring import FidSetup


def add_fid_arguments(p, *, sampler: str, nfe: int, seeds: str = "0-99", sets: int = 3,
                      sampler_choice: bool = True) -> None:
    """Options shared by the FID analyses: sampler, NFE, grid, mode, seed sets, batch."""
    if sampler_choice:
        p.add_argument("--sampler", default=sampler, help=f"sampler (default {sampler})")
    p.add_argument("--nfe", type=int, default=nfe, help=f"denoiser evaluations per sample (default {nfe})")
    p.add_argument("--grid", default="edm", help="sigma grid (default edm: rho = 7, 0.002..80)")
    p.add_argument("--mode", default="concat", choices=["concat", "residual", "norm"],
                   help="where rho acts (seed 003 Def. 3.1 = concat; App. C variants)")
    p.add_argument("--seeds", default=seeds, help=f"first seed set (default {seeds}); further sets are shifted copies")
    p.add_argument("--seed-sets", type=int, default=sets, help=f"number of disjoint seed sets (default {sets})")
    p.add_argument("--batch", type=int, default=250, help="generation batch (part of the stored run key)")


def setup_from_args(args, ctx: AnalysisContext) -> FidSetup:
    return FidSetup(ctx.scorer, ctx.model_ref, seeds=args.seeds, seed_sets=args.seed_sets, grid=args.grid,
                    mode=args.mode, batch=args.batch, device=ctx.device, progress=ctx.progress)
