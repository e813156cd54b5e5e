"""Figures of the analyses: ``skiptune.report.analyses.<name>.plot(result, path)``, drawn from a result alone."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skiptune.analysis.base import AnalysisResult

Plot = Callable[[AnalysisResult, Path], Any]


def plot_for(name: str) -> Plot | None:
    """The figure function of analysis ``name``, or None for a name without one (e.g. a foreign result)."""
    try:
        module = importlib.import_module(f"skiptune.report.analyses.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"skiptune.report.analyses.{name}":
            raise
        return None
    return getattr(module, "plot", None)
