"""What every run writes next to its results: resolved config, seeds, versions, git revision."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from skiptune.store import environment


def write_run_json(path: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``{"config": ..., "environment": versions and git revision}`` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": config, "environment": environment()}, indent=2, default=str) + "\n")
    return path
