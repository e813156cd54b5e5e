"""Options of ``skiptune analyze <name>``: ``add_arguments(parser)`` and ``run(args, ctx) -> AnalysisResult``,
one module per analysis (named as in :data:`skiptune.analysis.ANALYSIS_NAMES`); they build the
library call from the arguments and nothing else."""
