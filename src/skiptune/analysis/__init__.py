"""The paper's analyses as library functions: ``skiptune.analysis.<name>.run_<name>`` (see :mod:`.base`).

Their figures live in :mod:`skiptune.report.analyses` and their command-line options in
:mod:`skiptune.cli.analyses`, one module per analysis and layer, named alike.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from skiptune.analysis.base import AnalysisResult, cached, record_result, stored_results

#: the analyses of ``skiptune analyze``, in the order of seed 003's presentation
ANALYSIS_NAMES: list[str] = ["norms", "complexity", "sweep", "grid", "dsm", "windows", "order", "finetune",
                             "inversion", "stochastic"]


def analysis_modules() -> dict[str, ModuleType]:
    """``NAME -> library module`` for every registered analysis."""
    return {name: importlib.import_module(f"skiptune.analysis.{name}") for name in ANALYSIS_NAMES}


__all__ = ["ANALYSIS_NAMES", "AnalysisResult", "analysis_modules", "cached", "record_result", "stored_results"]
