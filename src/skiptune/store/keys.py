"""Canonical run configs and their keys.

A run's identity is ``sha256(canonical_json(config))``: independent of key order, of tuple vs list
and of ``9`` vs ``9.0``; any other change of any value gives another key. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from skiptune.core.errors import InputError


def canonical_value(value: Any, where: str = "") -> Any:
    """A config value as plain JSON data (see :func:`canonical_config`); ``where`` names it in errors."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"config value at {where} is {value}: configs must hold finite numbers")
        # 9.0 and 9 name the same setting; -0.0 and 0.0 as well
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InputError(f"config keys must be strings, got {k!r} at {where}")
            out[k] = canonical_value(v, f"{where}.{k}" if where else k)
        return out
    if isinstance(value, (list, tuple)):
        return [canonical_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return canonical_value(value.item(), where)  # numpy / torch scalars
    raise InputError(f"config value at {where or 'top level'} has type {type(value).__name__}, which has no "
                     "canonical JSON form; convert it to a str, number, bool, list or dict")


def canonical_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as plain JSON data: tuples -> lists, integral floats -> ints, scalars unwrapped.

    Raises ValueError for non-finite numbers, non-string keys and values without a JSON form.
    """
    if not isinstance(config, Mapping):
        raise InputError(f"a run config must be a mapping (dict), got {type(config).__name__}")
    return canonical_value(config, "")


def canonical_json(config: Mapping[str, Any]) -> str:
    """Canonical JSON text of a config: sorted keys, no whitespace, ASCII, shortest float repr."""
    return json.dumps(canonical_config(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def config_key(config: Mapping[str, Any]) -> str:
    """``sha256(canonical_json(config))`` as 64 hex digits: the deterministic identity of a run.

    Independent of key order, of tuple vs list and of ``9`` vs ``9.0``; any other change of any
    value gives another key. Rule strings are taken literally: pass ``str(parse_rule(text))`` so
    that ``layer:0.7`` and ``layer:0.7:1.0`` share a key.
    """
    return hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()
