"""Provenance recorded with every result: versions, host, git revision; and the run JSON written beside outputs.

Standard library only (torch and numpy versions are read from their installed metadata when they
are not imported), so the results store can record provenance without importing torch.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def _package_version(name: str) -> str | None:
    version = getattr(sys.modules.get(name), "__version__", None)
    if version:
        return str(version)
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The git commit of the skiptune source tree (``+dirty`` if files changed or were added), or None."""
    here = str(Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def environment() -> dict[str, Any]:
    """Versions of skiptune, torch, numpy and python, the git revision, the host and (if torch is loaded) its
    CPU thread count: what every stored run and every training run records."""
    env: dict[str, Any] = {
        "skiptune": _package_version("skiptune"),
        "torch": _package_version("torch"),
        "numpy": _package_version("numpy"),
        "python": platform.python_version(),
        "git_revision": git_revision(),
        "host": socket.gethostname(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["cpu_threads"] = torch.get_num_threads()
    return env


def write_run_json(path: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``{"config": ..., "environment": environment()}`` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": config, "environment": environment()}, indent=2, default=str) + "\n")
    return path
