"""JSON results stored as runs: analysis units (cached intermediate values) and finished analyses.

Both are runs of the results store, like generated-and-scored points, so one mechanism resumes and
reuses everything: a unit is ``{"kind": "analysis-unit", "unit": NAME, "version": V, "config": ...}``
and a finished analysis ``{"kind": "analysis", "analysis": NAME, "config": ...}``, each with its JSON
payload as the run's result. NaN and infinities, which JSON lacks, are stored as the strings
``"nan"``, ``"inf"``, ``"-inf"`` and read back as floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from skiptune.store import RunOutcome, RunRecord, Store, canonical_config

#: bump to recompute every stored analysis unit (their formulas changed)
UNIT_VERSION = 1


def to_json(value: Any) -> Any:
    """``value`` with non-finite floats as strings (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    """The inverse of :func:`to_json`."""
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, Mapping):
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def unit_config(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": "analysis-unit", "unit": name, "version": UNIT_VERSION, "config": canonical_config(config)}


def cached(store: Store | None, name: str, config: Mapping[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()`` once per (analysis unit ``name``, ``config``): stored in ``store`` and reused.

    The unit's value is committed as soon as it is computed, so an analysis killed midway keeps every
    finished unit. Without a store the value is just computed.
    """
    if store is None:
        return compute()
    record = store.run_once(unit_config(name, config), lambda _cfg: RunOutcome(result=to_json(compute())))
    return from_json(record.result)


def units(store: Store, name: str) -> list[RunRecord]:
    """The stored runs of analysis unit ``name``, oldest first."""
    return store.runs({"kind": "analysis-unit", "unit": name}, status="complete")


def record_result(store: Store | None, name: str, config: Mapping[str, Any], payload: Any) -> None:
    """Keep a finished analysis (its ``payload``) in the store, replacing an earlier one of the same config."""
    if store is not None:
        store.complete_run({"kind": "analysis", "analysis": name, "config": canonical_config(config)}, {},
                           result=to_json(payload), overwrite=True)


def stored_results(store: Store, name: str | None = None) -> list[Any]:
    """The payloads of all finished analyses (of one name) in the store, oldest first."""
    filters = {"kind": "analysis", **({"analysis": name} if name else {})}
    return [from_json(r.result) for r in store.runs(filters, status="complete")]
