"""Writing images: single PNGs, image grids, and .npz arrays (uint8 NHWC)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _hwc(img: torch.Tensor) -> np.ndarray:
    """uint8 [C, H, W] -> [H, W] (gray) or [H, W, 3]."""
    a = img.detach().cpu().numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def save_png(img: torch.Tensor, path: str | os.PathLike) -> None:
    Image.fromarray(_hwc(img)).save(path)


def make_grid(images: torch.Tensor, ncols: int | None = None, pad: int = 1, pad_value: int = 255) -> torch.Tensor:
    """Tile uint8 images [N, C, H, W] into one [C, rows*(H+pad)+pad, cols*(W+pad)+pad] image."""
    n, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = torch.full((c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), pad_value, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[i]
    return grid


def save_grid(images: torch.Tensor, path: str | os.PathLike, ncols: int | None = None, scale: int = 1) -> Path:
    """Save uint8 images as one PNG grid, optionally upscaled by an integer factor (nearest)."""
    grid = make_grid(images, ncols)
    if scale > 1:
        grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    save_png(grid, path)
    return Path(path)


def save_npz(images: torch.Tensor, path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """uint8 [N, C, H, W] images -> .npz with ``images`` as NHWC (the layout EDM and the metrics read)."""
    np.savez(path, images=images.permute(0, 2, 3, 1).cpu().numpy(), **arrays)
    return Path(path)
