"""Adapters: where the skips live in each supported architecture."""

from skiptune.adapters import diffusers, edm, openai_unet, uvit  # noqa: F401  (importing registers the adapters)
from skiptune.adapters.base import MODES, Adapter, SkipSite, find_adapter, register_adapter

__all__ = ["MODES", "Adapter", "SkipSite", "find_adapter", "register_adapter"]
