"""Multi-process runs through ``torch.distributed`` as launched by ``torchrun`` (NCCL on GPUs, gloo on CPU).

    torchrun --standalone --nproc_per_node 4 -m skiptune sample --model net.pkl --seeds 0-49999 --out imgs
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29400 -m skiptune sweep ...

Work is split so that the result does not depend on the number of processes:

- seeds are cut into batches of ``batch`` consecutive seeds, exactly as one process would cut them,
  and each rank takes a contiguous run of whole batches (:func:`shard_batches`), so every image is
  computed in the same batch as in a single-process run;
- feature statistics are float64 sums and counts, added across ranks with ``all_reduce``
  (:func:`reduce_feature_set`); raw features are gathered in rank order, i.e. in image order;
- sweeps hand whole configurations to ranks; only rank 0 writes to the results store
  (:func:`skiptune.runs.sweep.run_sweep`), so the store needs no shared file system.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything runs in one process and no
process group is created.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from skiptune.core.errors import InputError
from skiptune.metrics import FeatureSet, FeatureStats, extract_features
from skiptune.metrics.images import open_images


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world_size``, and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """``[obj of rank 0, ...]`` on rank ``dst``, ``None`` elsewhere."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_reduce_sum(self, array: np.ndarray) -> np.ndarray:
        """Elementwise sum over ranks of a float64 array (on the communication device)."""
        if not self.enabled:
            return array
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    @property
    def comm_device(self) -> torch.device:
        """NCCL moves only CUDA tensors; gloo only CPU ones."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend, "device": str(self.device)}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def init_distributed(device: str | torch.device = "cpu", backend: str | None = None) -> Dist:
    """Join the ``torchrun`` process group if there is one; pick this rank's device.

    ``device='cuda'`` becomes ``cuda:LOCAL_RANK``; the backend defaults to NCCL for CUDA devices and
    gloo otherwise. Calling it again returns the same description without re-initialising.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        if not torch.cuda.is_available():
            raise InputError("--device cuda was given but torch sees no CUDA device; use --device cpu")
        dev = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return Dist(device=dev)
    if not 0 <= rank < world:
        raise InputError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(rank=rank, world_size=world, local_rank=local, backend=dist.get_backend(), device=dev)


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_range(num_batches: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous ``[lo, hi)`` of batch indices for ``rank``: sizes differ by at most one."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is not in 0..{world_size - 1}")
    base, extra = divmod(num_batches, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def shard_batches(items: Sequence[Any], batch: int, rank: int, world_size: int) -> list[Any]:
    """The items of ``rank``: whole batches of ``batch`` consecutive items, a contiguous run of them.

    The union over ranks, in rank order, is ``items``; every batch is the one a single process
    would form with the same ``batch``.
    """
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    num_batches = -(-len(items) // batch)
    lo, hi = shard_range(num_batches, rank, world_size)
    return list(items[lo * batch:hi * batch])


def reduce_feature_stats(stats: FeatureStats, d: Dist) -> FeatureStats:
    """Statistics over all ranks: float64 sums, outer products and counts are added; raw features
    (if kept) are concatenated in rank order."""
    if not d.enabled:
        return stats
    if not stats.has_counts:
        raise InputError("statistics without sample counts cannot be reduced across processes")
    total_n = int(d.all_reduce_sum(np.array([stats.n], np.float64))[0])
    out = FeatureStats(stats.dim, keep_features=stats.keep_features, meta=stats.meta)
    out.n = total_n
    out._sum = d.all_reduce_sum(stats._sum)
    out._outer = d.all_reduce_sum(stats._outer)
    if stats.keep_features:
        parts = d.all_gather_object(stats.features if stats.n else np.zeros((0, stats.dim), np.float32))
        out._chunks = [np.asarray(p, np.float32) for p in parts if len(p)]
    return out


def reduce_feature_set(fs: FeatureSet, d: Dist, *, meta: dict[str, Any] | None = None) -> FeatureSet:
    """A :class:`FeatureSet` whose statistics cover the images of all ranks (see :func:`reduce_feature_stats`).

    ``meta`` replaces the per-rank provenance (source, fingerprint, n) by that of the whole source.
    """
    if not d.enabled:
        return fs
    # a rank whose share is empty has no statistics yet: give it empty ones of the right shape
    dims = d.all_gather_object({name: (st.dim, st.keep_features) for name, st in fs.stats.items()})
    wanted = next((x for x in dims if x), {})
    if any(x and x != wanted for x in dims):
        raise RuntimeError(f"ranks extracted different features: {dims}")
    local = {name: fs.stats.get(name) or FeatureStats(dim, keep_features=keep) for name, (dim, keep) in wanted.items()}
    stats = {name: reduce_feature_stats(local[name], d) for name in sorted(wanted)}
    full_meta = {**fs.meta, **(meta or {})}
    for name, st in stats.items():
        st.meta = {**full_meta, "feature": name}
    return FeatureSet(stats=stats, meta=full_meta, primary=fs.primary)


def extract_features_distributed(images: Any, extractor: Any, d: Dist, *, features: Sequence[str] | None = None,
                                 keep: bool | Sequence[str] = True, batch_size: int = 64,
                                 progress: bool = False) -> FeatureSet:
    """:func:`skiptune.metrics.extract_features` with the images shared out over the ranks.

    Every rank extracts whole batches of its contiguous share and receives the statistics of all
    images; the provenance (source, fingerprint, count) is that of the whole source.
    """
    source = open_images(images)
    if not d.enabled:
        return extract_features(source, extractor, features=features, keep=keep, batch_size=batch_size,
                                progress=progress)
    mine = shard_batches(range(source.num_images), batch_size, d.rank, d.world_size)
    part = source.subset(mine[0], mine[-1] + 1) if mine else source.subset(0, 0)
    fs = extract_features(part, extractor, features=features, keep=keep, batch_size=batch_size,
                          progress=progress and d.is_main)
    whole = {"source": source.description, "source_fingerprint": source.fingerprint, "n": source.num_images}
    return reduce_feature_set(fs, d, meta=whole)


def gather_generated(part: Any, d: Dist) -> Any:
    """The :class:`skiptune.experiment.generate.Generated` of all ranks, concatenated in rank (= seed) order, on rank 0.

    ``part`` is this rank's result (``None`` for a rank without seeds). Other ranks get ``None``;
    ``seconds`` is the longest rank's time and ``processes`` the number of ranks.
    """
    if not d.enabled:
        return part
    payload = None if part is None else (part.images.cpu(), None if part.labels is None else part.labels.cpu(),
                                         list(part.seeds), part.nfe, part.seconds, part.cache)
    parts = d.gather_object(payload)
    if not d.is_main:
        return None
    from skiptune.experiment.generate import Generated

    got = [p for p in parts if p is not None]
    labels = None if got[0][1] is None else torch.cat([p[1] for p in got])
    return Generated(torch.cat([p[0] for p in got]), labels, [s for p in got for s in p[2]], got[0][3],
                     max(p[4] for p in got), processes=d.world_size, cache=_merge_cache([p[5] for p in got]))


def _merge_cache(records: list) -> dict | None:
    """The cache records of all ranks as one: call counts summed, the per-sample schedule of rank 0, timing dropped."""
    records = [r for r in records if r]
    if not records:
        return None
    keep = ("policy", "full_per_sample", "partial_per_sample")
    out = {k: records[0][k] for k in keep}
    for k in ("full_calls", "partial_calls", "trajectories"):
        out[k] = sum(r[k] for r in records)
    return out
