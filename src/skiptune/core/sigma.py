"""Publication of the current noise level to the skip rules.

Skip-Tuning rules may depend on the noise level sigma (seed 003, Sec. 5.2). Networks do not
receive sigma in a uniform way (EDM passes c_noise = ln(sigma)/4, VP models a discrete timestep),
so every denoiser call publishes sigma here, in the EDM convention, before running the network.
Our preconditioners (:mod:`skiptune.nets.precond`) and the denoiser wrappers of
:mod:`skiptune.sampling` do this; any custom caller can use :func:`publish_sigma` itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_CURRENT: ContextVar[torch.Tensor | None] = ContextVar("skiptune_sigma", default=None)


@contextmanager
def publish_sigma(sigma: torch.Tensor | float) -> Iterator[None]:
    """Make ``sigma`` (a scalar or one value per sample) visible to skip rules inside the block."""
    if not isinstance(sigma, torch.Tensor):
        sigma = torch.tensor(float(sigma), dtype=torch.float64)
    token = _CURRENT.set(sigma.detach().reshape(-1))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_sigma() -> torch.Tensor | None:
    """The sigma published by the innermost enclosing :func:`publish_sigma` (1-D tensor), or None."""
    return _CURRENT.get()
