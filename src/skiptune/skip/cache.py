"""Feature caching across sampling steps: Faster Diffusion's encoder propagation and DeepCache.

Both run the whole network at *key* evaluations and only part of it at the others, reusing features
kept at the last key evaluation (Li et al. 2023, "Faster Diffusion: Rethinking the Role of UNet Encoder";
Ma et al. 2024, "DeepCache"). With the skip network written as ``h, skips = encode(x)``,
``out = decode(h, skips)`` (:mod:`skiptune.nets.staged`; sites numbered 0 = innermost of n):

- ``encoder`` (encoder propagation): a key evaluation keeps every skip and the decoder's input at the
  innermost join (after the middle blocks, as Faster Diffusion keeps the mid block's output); a partial one
  runs no encoder and no middle block, only the decoder, on the kept features with the current time
  embedding.
- ``deepcache`` (deep-feature caching, branch b, 0 = the outermost skip): a key evaluation keeps the main
  input u of the join that consumes skip b (site n - 1 - b); a partial one runs the encoder until skip b is
  pushed (the shallow branch), then the decoder from that join on, with the kept u in place of everything
  deeper.

Which evaluations are key: every ``interval``-th (0, N, 2N, ...), or an explicit list (``keys=0-3,5,10``,
Faster Diffusion's non-uniform choice, or DeepCache's non-uniform intervals); the first evaluation is
always key. Evaluations are counted per trajectory in network evaluations (a Heun step is two).

A Skip-Tuning rule or FreeU attached to the same network acts at every join that runs, so on a partial
evaluation it acts on the kept skips (encoder) or the fresh shallow skips (deepcache); what it did to the
deeper joins at the key evaluation is inside the kept feature. The handles compose in any order.

No state leaks between trajectories: the kept features are per sample row (sample i's partial pass reads
only its own row), :func:`~skiptune.experiment.generate.generate` resets the cache at every batch, and a
new trajectory is also noticed by itself when the published sigma returns to (or above) the first sigma
of the current one, or when the batch shape changes. A policy whose every evaluation is key
(``encoder:1``) computes exactly what the plain network computes.

Classifier-free guidance that calls the network twice per evaluation (conditional, then unconditional)
is handled by ``streams=2``: calls alternate between two independent caches.

Not implemented: Faster Diffusion's prior-noise injection (it changes the sampler state, not the network)
and its parallel decoding of several non-key steps in one batch (a GPU throughput trick).
"""

from __future__ import annotations

import re
import time
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from skiptune.adapters import find_adapter
from skiptune.core.errors import InputError, StateError
from skiptune.core.sigma import current_publication, uniform_value

KINDS = {"encoder": "Faster Diffusion encoder propagation: partial passes run only the decoder",
         "deepcache": "DeepCache: partial passes run only the shallow branch down to skip `branch`"}
_STAGE = {"encoder": "encoder", "deepcache": "deep"}
_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _parse_keys(text: str) -> tuple[int, ...]:
    keys: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise InputError(f"cache keys {text!r}: each item must be an evaluation index or a range a-b (e.g. "
                             "keys=0-3,5,10)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise InputError(f"cache keys {text!r}: range {lo}-{hi} is empty")
        keys.update(range(lo, hi + 1))
    return tuple(sorted(keys))


def _format_keys(keys: tuple[int, ...]) -> str:
    parts, i = [], 0
    while i < len(keys):
        j = i
        while j + 1 < len(keys) and keys[j + 1] == keys[j] + 1:
            j += 1
        parts.append(str(keys[i]) if j == i else f"{keys[i]}-{keys[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class CachePolicy:
    """Which evaluations run the whole network, and what the others reuse.

    String form (:meth:`parse`, ``str``): ``encoder:3`` (key every 3rd evaluation), ``encoder:keys=0-3,5,10``,
    ``deepcache:3``, ``deepcache:2:branch=1``. ``interval`` 1 makes every evaluation key (no caching).
    """

    kind: str
    interval: int | None = None
    keys: tuple[int, ...] | None = None
    branch: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"unknown cache policy {self.kind!r}; use one of {', '.join(KINDS)} (or none)")
        if (self.interval is None) == (self.keys is None):
            raise InputError("a cache policy needs exactly one of an interval (encoder:3) and a key list "
                             "(encoder:keys=0-3,5,10)")
        if self.interval is not None:
            if isinstance(self.interval, bool) or int(self.interval) != self.interval or self.interval < 1:
                raise InputError(f"cache interval must be an integer >= 1, got {self.interval!r}")
            object.__setattr__(self, "interval", int(self.interval))
        if self.keys is not None:
            keys = tuple(sorted({int(k) for k in self.keys}))
            if not keys or keys[0] != 0:
                raise InputError(f"cache keys must include evaluation 0 (nothing is kept before the first full "
                                 f"pass), got {_format_keys(keys) or 'none'}")
            object.__setattr__(self, "keys", keys)
        if isinstance(self.branch, bool) or int(self.branch) != self.branch or self.branch < 0:
            raise InputError(f"cache branch must be an integer >= 0, got {self.branch!r}")
        object.__setattr__(self, "branch", int(self.branch))
        if self.kind == "encoder" and self.branch:
            raise InputError("branch is a deepcache option; encoder propagation always reruns the whole decoder")

    @classmethod
    def parse(cls, text: str | CachePolicy | None) -> CachePolicy | None:
        """``none`` (or None, or empty) -> None; else the policy (InputError naming the fix)."""
        if text is None or isinstance(text, CachePolicy):
            return text
        text = str(text).strip()
        if text in ("", "none"):
            return None
        kind, _, rest = text.partition(":")
        if kind not in KINDS:
            raise InputError(f"unknown cache policy {kind!r} in {text!r}; use none, encoder:N or deepcache:N "
                             "(optionally keys=..., branch=B)")
        args: dict = {}
        for item in filter(None, rest.split(":")):
            name, eq, value = item.partition("=")
            if not eq:
                name, value = "interval", item
            if name not in ("interval", "keys", "branch"):
                raise InputError(f"unknown cache option {name!r} in {text!r}; options: interval, keys, branch")
            if name == "keys":
                args["keys"] = _parse_keys(value)
                continue
            try:
                args[name] = int(value)
            except ValueError:
                raise InputError(f"cache policy {text!r}: {name} {value!r} is not an integer") from None
        return cls(kind, **args)

    def __str__(self) -> str:
        when = str(self.interval) if self.interval is not None else f"keys={_format_keys(self.keys)}"
        head = f"{self.kind}:{when}"
        return head + (f":branch={self.branch}" if self.branch else "")

    def is_key(self, evaluation: int) -> bool:
        if self.interval is not None:
            return evaluation % self.interval == 0
        return evaluation in self.keys

    def full_evaluations(self, nfe: int) -> int:
        """How many of ``nfe`` evaluations of one trajectory run the whole network."""
        return sum(self.is_key(i) for i in range(nfe))

    @property
    def computes_every_step(self) -> bool:
        return self.interval == 1


@dataclass
class CacheStats:
    """Network calls of a cached run, full and partial, and (when timed) the seconds spent in each."""

    full: int = 0
    partial: int = 0
    full_s: float = 0.0
    partial_s: float = 0.0
    trajectories: int = 0
    timed: bool = False

    @property
    def partial_cost(self) -> float | None:
        """Mean time of a partial call over that of a full one (None unless timed, with both kinds seen)."""
        if not self.timed or not self.full or not self.partial or self.full_s <= 0:
            return None
        return (self.partial_s / self.partial) / (self.full_s / self.full)

    @property
    def equivalent(self) -> float | None:
        """The run's cost in full-network calls: full + partial x partial_cost (None unless measurable)."""
        if not self.partial:
            return float(self.full)
        ratio = self.partial_cost
        return None if ratio is None else self.full + self.partial * ratio

    def to_dict(self) -> dict:
        out = {"full_calls": self.full, "partial_calls": self.partial, "trajectories": self.trajectories}
        if self.partial_cost is not None:
            out.update(partial_cost=self.partial_cost, equivalent_calls=self.equivalent)
        return out


@dataclass
class _Kept:
    u: torch.Tensor
    skips: list[torch.Tensor] | None
    shape: tuple
    device: torch.device


@dataclass
class _Runner:
    """Decides, call by call, which stages of the staged network run (installed as its ``feature_cache``)."""

    policy: CachePolicy
    sites: int
    streams: int
    timing: bool
    stats: CacheStats = field(default_factory=CacheStats)
    calls: int = 0
    first_sigma: float | None = None
    call_sigma: float | None = None  # the tuned network's sigma argument in this call, when one known number
    kept: dict = field(default_factory=dict)

    def reset(self) -> None:
        self.calls = 0
        self.first_sigma = None
        self.kept.clear()

    def _new_trajectory(self, stream: int) -> bool:
        """A published sigma at or above this trajectory's first one starts a new trajectory (stream 0 only)."""
        value = self.call_sigma
        if value is None:
            pub = current_publication()
            value = None if pub is None else pub.value
        if stream != 0 or value is None:
            return False
        if self.calls == 1 or self.first_sigma is None:
            self.first_sigma = value
            return False
        if value >= self.first_sigma:
            self.first_sigma = value
            return True
        return False

    def run(self, x: torch.Tensor, emb, encode, decode) -> torch.Tensor:
        stream = self.calls % self.streams
        self.calls += 1
        if self._new_trajectory(stream):
            self.kept.clear()
            self.calls = 1
        evaluation = (self.calls - 1) // self.streams
        if evaluation == 0 and stream == 0:
            self.stats.trajectories += 1
        kept = self.kept.get(stream)
        stale = kept is None or kept.shape != tuple(x.shape) or kept.device != x.device
        full = stale or self.policy.is_key(evaluation)
        if self.timing and x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter() if self.timing else 0.0
        out = self._full(x, emb, encode, decode, stream) if full else self._partial(x, emb, encode, decode, kept)
        dt = 0.0
        if self.timing:
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            dt = time.perf_counter() - t0
        if full:
            self.stats.full += 1
            self.stats.full_s += dt
        else:
            self.stats.partial += 1
            self.stats.partial_s += dt
        return out

    def _site(self) -> int:
        return 0 if self.policy.kind == "encoder" else self.sites - 1 - self.policy.branch

    def _full(self, x, emb, encode, decode, stream: int) -> torch.Tensor:
        box: list[torch.Tensor] = []
        h, skips = encode(x, emb)
        saved = list(skips) if self.policy.kind == "encoder" else None
        out = decode(h, skips, emb, None, (self._site(), box.append))
        self.kept[stream] = _Kept(box[0], saved, tuple(x.shape), x.device)
        return out

    def _partial(self, x, emb, encode, decode, kept: _Kept) -> torch.Tensor:
        if self.policy.kind == "encoder":
            return decode(kept.u, list(kept.skips), emb, 0, None)
        _, skips = encode(x, emb, self.policy.branch + 1)
        return decode(kept.u, skips, emb, self._site(), None)


def _note_call_sigma(net: nn.Module, runner: _Runner) -> list:
    """Hooks on ``net(x, sigma, ...)`` that give the runner the call's sigma when it is one known number
    (:func:`~skiptune.core.sigma.uniform_value`: never read from a tensor)."""
    def enter(module, args, kwargs):
        runner.call_sigma = uniform_value(args[1] if len(args) > 1 else kwargs.get("sigma"))

    def leave(module, args, kwargs, output):
        runner.call_sigma = None

    return [net.register_forward_pre_hook(enter, with_kwargs=True),
            net.register_forward_hook(leave, with_kwargs=True, always_call=True)]


class FeatureCache:
    """An attached cache policy. Use as a context manager, or call :meth:`remove` when done.

    ``streams`` is the number of network calls per evaluation that must be cached apart (2 for
    classifier-free guidance run as two calls). ``timing=True`` times every call (on CUDA it synchronises,
    so keep it for measurements), which gives :attr:`CacheStats.partial_cost`. ``policy`` None attaches
    nothing.
    """

    def __init__(self, net: nn.Module, policy: CachePolicy | str | None, *, streams: int = 1, timing: bool = False):
        self.policy = CachePolicy.parse(policy)
        if int(streams) != streams or streams < 1:
            raise InputError(f"streams must be an integer >= 1, got {streams!r}")
        self._target = None
        self._runner: _Runner | None = None
        self._handles: list = []
        if self.policy is None:
            return
        adapter = find_adapter(net)
        target = adapter.staged(net, _STAGE[self.policy.kind])
        sites = len(adapter.sites(net))
        if self.policy.kind == "deepcache" and self.policy.branch >= sites:
            raise InputError(f"deepcache branch {self.policy.branch} does not exist: this network has {sites} skips "
                             f"(branch 0 = the outermost .. {sites - 1} = the innermost)")
        check_start = getattr(target, "check_start", None)  # stages that can resume only at some joins
        if check_start is not None:
            check_start(0 if self.policy.kind == "encoder" else sites - 1 - self.policy.branch)
        if target in _ACTIVE or getattr(target, "feature_cache", None) is not None:
            raise StateError("this network already has an active feature cache; remove it first")
        self._runner = _Runner(self.policy, sites, int(streams), timing, CacheStats(timed=timing))
        if adapter.sigma_argument(net):  # net(x, sigma, ...): note sigma where the sampler made it a known number
            self._handles = _note_call_sigma(net, self._runner)
        target.feature_cache = self._runner
        self._target = weakref.ref(target)
        _ACTIVE[target] = self

    @property
    def stats(self) -> CacheStats:
        return self._runner.stats if self._runner is not None else CacheStats()

    def reset(self) -> None:
        """Forget the kept features (call between independent trajectories; generate does it per batch)."""
        if self._runner is not None:
            self._runner.reset()

    def remove(self) -> None:
        """Detach (idempotent): the network computes exactly what it did before."""
        target = None if self._target is None else self._target()
        if target is not None and _ACTIVE.get(target) is self:
            target.__dict__.pop("feature_cache", None)  # back to the class attribute (None)
            del _ACTIVE[target]
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._runner is not None:
            self._runner.kept.clear()
        self._target = None

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"FeatureCache(policy='{self.policy}', active={self._target is not None})"


def feature_cache(net: nn.Module, policy: CachePolicy | str | None, *, streams: int = 1,
                  timing: bool = False) -> FeatureCache:
    """Attach a cache policy (``"deepcache:3"``, ``"encoder:keys=0-3,5,10"``) to ``net``; a context manager."""
    return FeatureCache(net, policy, streams=streams, timing=timing)


def check_cache(net: nn.Module, policy: CachePolicy | str | None) -> None:
    """Fail now, before any work, if ``net`` cannot run ``policy`` (attaches and detaches it)."""
    FeatureCache(net, policy).remove()


def canonical_cache(policy: CachePolicy | str | None) -> str | None:
    """The stored form of a policy: None for no caching (and for ``interval`` 1, which computes every step)."""
    policy = CachePolicy.parse(policy)
    if policy is None or policy.computes_every_step:
        return None
    return str(policy)


__all__ = ["KINDS", "CachePolicy", "CacheStats", "FeatureCache", "canonical_cache", "check_cache", "feature_cache"]
