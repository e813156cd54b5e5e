"""Per-seed randomness: sample i depends only on seed i, never on the batch it falls in.

Each seed owns one ``torch.Generator``; a batch draws each sample's values from its own generator
and stacks them (the idea of EDM's ``StackedRandomGenerator``, generate.py). The initial latents and
every per-step noise draw of the stochastic samplers (EDM Alg. 2 churn, DDIM with eta > 0) come
from the same per-seed streams, so a seed range split into batches of 1, 7 or 64 gives bit-identical
samples as long as the denoiser itself is batch-invariant.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from skiptune.core.errors import InputError

_SEED_LIMIT = 1 << 63


def parse_seeds(spec: str | int | Sequence[int]) -> list[int]:
    """``"0-3,10,12-13"`` -> ``[0, 1, 2, 3, 10, 12, 13]`` (inclusive ranges, EDM style).

    Integers and sequences of integers pass through (checked). Seeds must be in [0, 2^63).
    """
    if isinstance(spec, int):
        seeds = [spec]
    elif isinstance(spec, str):
        seeds = []
        for part in spec.replace(" ", "").split(","):
            if not part:
                raise InputError(f"empty element in seed list {spec!r}")
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if b < a:
                    raise InputError(f"seed range {part!r} is empty (end < start)")
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
    else:
        seeds = [int(s) for s in spec]
    for s in seeds:
        if not 0 <= s < _SEED_LIMIT:
            raise InputError(f"seed {s} outside [0, 2^63)")
    return seeds


class SeedNoise:
    """Standard normal (and uniform) draws with one generator per seed.

    ``randn(shape)`` returns a tensor of shape ``[len(seeds), *shape]`` whose row i comes only from
    seed i's generator. Values are drawn in ``dtype`` (float32 by default, like EDM's latents) and
    returned in that dtype; ``randn_like(x)`` returns ``x.dtype``.
    """

    def __init__(
        self, seeds: Sequence[int] | str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ):
        self.seeds = parse_seeds(seeds)
        if not self.seeds:
            raise InputError("SeedNoise needs at least one seed")
        self.device = torch.device(device)
        self.dtype = dtype
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """Standard normal draws of per-sample ``shape``, stacked over seeds."""
        return torch.stack(
            [torch.randn(tuple(shape), generator=g, device=self.device, dtype=self.dtype) for g in self.generators]
        )

    def rand(self, shape: Sequence[int]) -> torch.Tensor:
        """Uniform [0, 1) draws of per-sample ``shape``, stacked over seeds."""
        return torch.stack(
            [torch.rand(tuple(shape), generator=g, device=self.device, dtype=self.dtype) for g in self.generators]
        )

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise InputError(f"batch of {x.shape[0]} samples but {len(self.generators)} seeds")
        return self.randn(x.shape[1:]).to(device=x.device, dtype=x.dtype)


def seed_batches(seeds: Sequence[int] | str, batch_size: int) -> Iterator[list[int]]:
    """Consecutive chunks of at most ``batch_size`` seeds."""
    seeds = parse_seeds(seeds)
    if batch_size < 1:
        raise InputError("batch_size >= 1")
    for i in range(0, len(seeds), batch_size):
        yield seeds[i : i + batch_size]
