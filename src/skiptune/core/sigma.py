"""Publication of the current noise level to the skip rules.

Skip-Tuning rules may depend on the noise level sigma (seed 003, Sec. 5.2). Networks do not
receive sigma in a uniform way (EDM passes c_noise = ln(sigma)/4, VP models a discrete timestep),
so every denoiser call publishes sigma here, in the EDM convention, before running the network.
Our preconditioners (:mod:`skiptune.nets.precond`) and the denoiser wrappers of
:mod:`skiptune.sampling` do this; any custom caller can use :func:`publish_sigma` itself.

A publication holds sigma as a 1-D tensor (one value per sample, or one for the whole batch) and,
when it is known without reading the tensor, the common value as a Python number. Reading a tensor's
value from the host (``float()``, ``bool()``, ``.item()``) waits for the device, so the skip hooks
never do it: they use the Python number when there is one and compute per-sample rho with tensor
operations otherwise. A value is known when sigma is published as a number, when the publisher
passes ``value=``, or when the tensor was marked by :func:`mark_uniform` (the samplers mark the
sigma vector they build from their float sigma) or is a view of such a tensor.

Publications nest (the innermost wins) and are kept per thread, in a plain stack that
``torch.compile`` traces without a graph break; a publication scope must not span an ``await``.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import torch

_MARK = "_skiptune_uniform_sigma"


class Publication(NamedTuple):
    """One published noise level: ``tensor`` (1-D) and, if known, the common ``value`` of its entries."""

    tensor: torch.Tensor
    value: float | None


class _Local(threading.local):
    def __init__(self):
        self.stack: list[Publication] = []


_LOCAL = _Local()


class _HookGuard:
    """A number that changes when the set of attached hook structures changes (see :func:`set_hook_token`)."""

    def __init__(self):
        self.token = 0


_GUARD = _HookGuard()


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


def mark_uniform(t: torch.Tensor, value: float) -> torch.Tensor:
    """Record that every entry of ``t`` equals ``value`` (a Python number); returns ``t``.

    The record holds for ``t`` and its views until one of them is modified in place.
    """
    if not _compiling():
        setattr(t, _MARK, (float(value), _version(t)))
    return t


def uniform_value(sigma) -> float | None:
    """The common value of ``sigma``'s entries if known without reading a tensor, else None.

    A Python number is its own value; a tensor has one if it, or the tensor it is a view of, was
    marked by :func:`mark_uniform` and has not been modified in place since.
    """
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        return float(sigma)
    if not isinstance(sigma, torch.Tensor) or _compiling():
        return None
    for source in (sigma, sigma._base):
        mark = getattr(source, _MARK, None) if source is not None else None
        if mark is not None and mark[1] == _version(sigma):
            return mark[0]
    return None


class _Scope:
    """The context manager returned by :func:`publish_sigma`."""

    def __init__(self, publication: Publication):
        self.publication = publication

    def __enter__(self) -> Publication:
        if _compiling() and _GUARD.token < 0:  # reading the token makes compiled code depend on it
            raise AssertionError("hook token must be >= 0")
        _LOCAL.stack.append(self.publication)
        return self.publication

    def __exit__(self, *exc) -> None:
        stack = _LOCAL.stack
        if stack and stack[-1] is self.publication:
            stack.pop()
            return
        for at in range(len(stack) - 1, -1, -1):  # closed out of order: drop this one and everything above it
            if stack[at] is self.publication:  # (by identity: == would compare the tensors)
                del stack[at:]
                return


def publish_sigma(sigma: torch.Tensor | float, *, value: float | None = None) -> _Scope:
    """Make ``sigma`` (a scalar or one value per sample) visible to skip rules inside the ``with`` block.

    ``value``, if given, is the value of every entry of ``sigma`` (the caller knows it, e.g. a
    sampler's step sigma); otherwise it is taken from a number or a marked tensor (:func:`uniform_value`).
    """
    if isinstance(sigma, torch.Tensor):
        known = float(value) if value is not None else uniform_value(sigma)
        tensor = sigma.detach().reshape(-1)
    else:
        known = float(sigma) if value is None else float(value)
        tensor = torch.tensor([float(sigma)], dtype=torch.float64)
    return _Scope(Publication(tensor, known))


def current_publication() -> Publication | None:
    """The innermost enclosing publication of this thread, or None."""
    stack = _LOCAL.stack
    return stack[-1] if stack else None


def current_sigma() -> torch.Tensor | None:
    """The sigma published by the innermost enclosing :func:`publish_sigma` (1-D tensor), or None."""
    stack = _LOCAL.stack
    return stack[-1].tensor if stack else None


def set_hook_token(token: int) -> None:
    """Set the number that code compiled through :func:`publish_sigma` depends on.

    ``torch.compile`` does not notice forward hooks added to modules that had none when it traced
    them. A network that publishes sigma inside its forward (our preconditioners) reads this token
    while being traced, so its compiled code is re-checked whenever the token changes; the skip
    package sets one token per structure of attached hooks (which networks, which modes), so that
    attaching a rule of a structure seen before reuses the code compiled for it.
    """
    _GUARD.token = int(token)
