"""The filter language of stored runs: ``path=value`` on dotted config paths (``sampler_options.order=2``).

Numbers compare by value, command-line strings against any value's text form. Standard library only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from skiptune.store.keys import canonical_value

MISSING = object()


def lookup(config: Mapping[str, Any], path: str, default: Any = MISSING) -> Any:
    node: Any = config
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return default
    return node


def _same(actual: Any, wanted: Any) -> bool:
    """Filter comparison: numbers numerically, command-line strings against any value's text form."""
    if isinstance(wanted, str) and not isinstance(actual, str):
        if isinstance(actual, bool) or actual is None:
            return wanted.lower() == json.dumps(actual)
        if isinstance(actual, (int, float)):
            try:
                return math.isclose(float(wanted), actual, rel_tol=1e-12, abs_tol=1e-12)
            except ValueError:
                return False
        return wanted == json.dumps(actual, sort_keys=True, separators=(",", ":"))
    if isinstance(actual, bool) or isinstance(wanted, bool):
        return actual is wanted
    if isinstance(actual, (int, float)) and isinstance(wanted, (int, float)):
        return math.isclose(actual, wanted, rel_tol=1e-12, abs_tol=1e-12)
    return canonical_value(actual, "") == canonical_value(wanted, "")


def matches(config: Mapping[str, Any], filters: Mapping[str, Any] | None) -> bool:
    """True if every ``path: value`` of ``filters`` holds in ``config`` (dotted paths; see ``_same``)."""
    for path, wanted in (filters or {}).items():
        actual = lookup(config, path)
        if actual is MISSING or not _same(actual, wanted):
            return False
    return True
