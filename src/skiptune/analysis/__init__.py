"""The paper's analyses as library functions (``run_<name>``) and ``skiptune analyze <name>`` commands.

Each module in :data:`ANALYSIS_MODULES` follows :mod:`skiptune.analysis.base`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from skiptune.analysis.base import AnalysisResult, cached, record_result, stored_results, write_result

#: modules of ``skiptune analyze``, in the order of seed 003's presentation
ANALYSIS_MODULES: list[str] = [
    "skiptune.analysis.norms",
    "skiptune.analysis.complexity",
    "skiptune.analysis.sweep",
    "skiptune.analysis.grid",
    "skiptune.analysis.dsm",
    "skiptune.analysis.windows",
    "skiptune.analysis.order",
    "skiptune.analysis.finetune",
    "skiptune.analysis.inversion",
    "skiptune.analysis.stochastic",
]


def analysis_modules() -> dict[str, ModuleType]:
    """``NAME -> module`` for every registered analysis."""
    mods = [importlib.import_module(m) for m in ANALYSIS_MODULES]
    return {m.NAME: m for m in mods}


__all__ = ["ANALYSIS_MODULES", "AnalysisResult", "analysis_modules", "cached", "record_result", "stored_results",
           "write_result"]
