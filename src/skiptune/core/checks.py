"""Validation of settings in config classes: one wording for every ``InputError`` about a number."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from skiptune.core.errors import InputError


def _why(meaning: str | None) -> str:
    return f" ({meaning})" if meaning else ""


def integer(value: Any, *, minimum: int, what: str, meaning: str | None = None) -> int:
    """``value`` as an int >= ``minimum``; a bool, a fraction or a non-number is refused, naming ``what``."""
    number = None
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            if isinstance(value, float) and value.is_integer():
                number = int(value)
    if number is None or number < minimum:
        raise InputError(f"{what} must be an integer >= {minimum}{_why(meaning)}, got {value!r}")
    return int(number)


def finite(value: Any, *, what: str, meaning: str | None = None) -> float:
    """``value`` as a finite float (a bool or a non-number is refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number{_why(meaning)}, got {value!r}")
    return float(value)


def positive(value: Any, *, what: str, meaning: str | None = None) -> float:
    """``value`` as a finite float > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise InputError(f"{what} must be a finite number > 0{_why(meaning)}, got {value!r}")
    return float(value)


def device(name: Any, *, what: str = "device"):
    """``name`` as a ``torch.device`` that exists here: one torch knows, and CUDA only where it is available
    (:class:`~skiptune.core.errors.InputError` naming ``what`` otherwise)."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"{what} {name}: not a torch device ({exc}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{what} {name}: no CUDA device is available on this machine; use cpu")
    return dev
