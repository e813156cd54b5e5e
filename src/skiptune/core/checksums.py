"""Checksums that identify weights, files and data in stored results (full sha256 hex digests)."""

from __future__ import annotations

import hashlib
import os

import torch
from torch import nn


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _update(h, t: torch.Tensor) -> None:
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def tensor_sha256(t: torch.Tensor) -> str:
    """Hex sha256 of a tensor's dtype, shape and raw bytes: identifies the data behind a stored result."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    _update(h, t)
    return h.hexdigest()


def state_dict_sha256(module: nn.Module) -> str:
    """Hex sha256 over a module's state dict (names, dtypes, shapes and raw bytes, in key order).

    Identifies in-memory weights that did not come from a file: every parameter and persistent buffer.
    """
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        _update(h, t)
    return h.hexdigest()
