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
#: the most seeds one list may hold: far above any FID run (EDM uses 50,000), far below what would exhaust memory
MAX_SEEDS = 10**7


def parse_seeds(spec: str | int | Sequence[int]) -> list[int]:
    """``"0-3,10,12-13"`` -> ``[0, 1, 2, 3, 10, 12, 13]`` (inclusive ranges, EDM style).

    Integers and sequences of integers pass through (checked). Every seed must be in [0, 2^63), appear once
    (one image per seed: a repeated seed would count its image twice), and a list holds at most
    :data:`MAX_SEEDS` seeds; anything else raises :class:`InputError` naming the offending part, before any
    list is built.
    """
    if isinstance(spec, str):
        spans = [_parse_part(part, spec) for part in spec.replace(" ", "").split(",")]
    else:
        items = [spec] if isinstance(spec, int) else list(spec)
        spans = []
        for s in items:
            try:
                s = int(s)
            except (TypeError, ValueError):
                raise InputError(f"seed {s!r} is not an integer") from None
            _check_seed(s)
            spans.append((s, s))
    total = sum(b - a + 1 for a, b in spans)
    if total > MAX_SEEDS:
        raise InputError(f"seed list {_show(spec)} holds {total} seeds, more than the {MAX_SEEDS} one list may hold; "
                         "split the work into several runs")
    repeated = _overlaps(spans)
    if repeated:
        count = sum(b - a + 1 for a, b in repeated)
        shown = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in repeated[:5]) + (",..." if len(repeated) > 5
                                                                                           else "")
        raise InputError(f"seed list {_show(spec)} repeats {count} seed{'s' if count > 1 else ''} ({shown}): "
                         "give every seed once")
    seeds: list[int] = []
    for a, b in spans:
        seeds.extend(range(a, b + 1))
    return seeds


def _show(spec) -> str:
    text = repr(spec) if isinstance(spec, str | int) else repr(list(spec))
    return text if len(text) <= 60 else text[:57] + "..."


def _check_seed(s: int) -> None:
    if not 0 <= s < _SEED_LIMIT:
        raise InputError(f"seed {s} outside [0, 2^63)")


def _parse_part(part: str, spec: str) -> tuple[int, int]:
    """One element of a seed list, ``"7"`` or ``"3-9"``, as an inclusive ``(start, end)``."""
    if not part:
        raise InputError(f"empty element in seed list {spec!r}")
    lo, sep, hi = part[1:].partition("-")
    lo = part[0] + lo
    try:
        a, b = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise InputError(f"seed list element {part!r} is not a seed (N) or a range (A-B) of non-negative integers"
                         ) from None
    _check_seed(a)
    _check_seed(b)
    if b < a:
        raise InputError(f"seed range {part!r} is empty (end < start)")
    return a, b


def _overlaps(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The seeds that more than one span covers, as sorted, merged inclusive ranges (no list of seeds is built)."""
    out: list[tuple[int, int]] = []
    reach = -1  # the largest seed covered so far
    for a, b in sorted(spans):
        if a <= reach:
            lo, hi = a, min(b, reach)
            if out and lo <= out[-1][1] + 1:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        reach = max(reach, b)
    return out


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
