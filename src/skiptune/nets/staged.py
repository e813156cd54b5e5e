"""Skip UNets as two stages, so that a feature cache can run part of a forward pass.

Every skip network here (EDM's UNets, the openai UNet, U-ViT) computes

    h, skips = encode(x)            # each encoder block pushes its output on ``skips``
    out = decode(h, skips)          # each join pops one skip, innermost first

and exposes the two stages with a common signature:

- ``encode(x, emb, pushes=None) -> (h, skips)``: with ``pushes = k`` it stops once ``k`` skips have been
  pushed (the shallow part of the encoder);
- ``decode(h, skips, emb, start=None, keep=None) -> out``: with ``start = s`` it skips every decoder block
  before the join of site ``s`` (sites are numbered as the adapters number them, 0 = innermost) and uses
  ``h`` as that join's main input; ``keep = (s, fn)`` calls ``fn(u)`` with the main input ``u`` of site
  ``s``'s join when the pass reaches it (the feature a cache keeps).

Site ``s`` of ``n`` pops skip ``n - 1 - s``, so a decoder started at site ``s`` needs the ``n - s`` outermost
skips: exactly what ``encode(x, emb, pushes=n - s)`` returns.

A network's ``feature_cache`` attribute is None (a plain pass) or an object with ``run(x, emb, encode,
decode)`` that decides which stages to run (:mod:`skiptune.skip.cache`); this module only defines the hook
point, so that nets never import the layers above them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Keep = tuple[int, Callable[[torch.Tensor], None]]


class StagedUNet:
    """Mixin for skip networks with ``_encode`` / ``_decode`` stages (see the module docstring)."""

    #: None, or the runner of an attached cache policy (set per instance by :class:`~skiptune.skip.FeatureCache`)
    feature_cache: Any = None

    def _stages(self, x: torch.Tensor, emb: Any, encode: Callable, decode: Callable) -> torch.Tensor:
        cache = self.feature_cache
        if cache is None:
            h, skips = encode(x, emb)
            return decode(h, skips, emb)
        return cache.run(x, emb, encode, decode)


def stop_encoder(skips: list, pushes: int | None) -> bool:
    """Whether an encoder asked for ``pushes`` skips has them all (checked before each pushing block)."""
    return pushes is not None and len(skips) >= pushes
