"""Adapters: where the skips live in each supported architecture."""

from skiptune.adapters import edm  # noqa: F401  (registers the adapter)
from skiptune.adapters.base import MODES, Adapter, SkipSite, find_adapter, register_adapter

__all__ = ["MODES", "Adapter", "SkipSite", "find_adapter", "register_adapter"]
