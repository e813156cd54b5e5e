"""FreeU (Si et al. 2023, "FreeU: Free Lunch in Diffusion U-Net") as removable hooks.

At every join of the first two decoder stages (stage 0 = the innermost, lowest resolution),
FreeU rescales the two inputs of the concatenation ``cat(u, d)``:

- backbone: the first half of u's channels is multiplied by b (b1 in stage 0, b2 in stage 1);
- skip: d is low-pass filtered in the Fourier domain, its lowest spatial frequencies multiplied
  by s (s1, s2): ``d <- IFFT(FFT(d) * M)`` with M = s on the frequencies ``-t <= k < t`` of both
  axes (t = threshold = 1, a 2x2 box at DC, as in FreeU's code) and 1 elsewhere.

This is what diffusers' ``enable_freeu(s1, s2, b1, b2)`` computes in its ``UpBlock2D`` and
``CrossAttnUpBlock2D`` (its "version 1": a constant backbone factor, not the structure-dependent
one of the paper's later version), with one exception: on a UNet without a mid block the tensor
entering the first up block is also the last skip, and diffusers scales its first half in place
before filtering that skip, so its skip is scaled too (``tests/test_freeu.py`` measures the
difference). Differences, deliberate:

- stages are the adapter's decoder stages (diffusers' up-block index; for our EDM UNets, the rank
  of the join resolution), never detected from channel counts, so any supported UNet works,
  including diffusers' ``UNet2DModel`` and attention up blocks that diffusers leaves untouched;
- 0.0 is a valid factor (b = 0 drops half the backbone channels, s = 0 removes the low box);
  diffusers treats any zero factor as "FreeU off";
- a factor of exactly 1 attaches nothing, so ``b = s = 1`` is bit-identical to the plain network;
- the filter runs in float32 (float64 inputs stay float64; diffusers rounds them to float32),
  on the input's device.

FreeU is not a per-site scalar (it filters), so it is not a :class:`~skiptune.skip.rules.Rule`:
it is a handle of its own, attached next to a Skip-Tuning rule when both are wanted::

    with skip_tuning(net, "layer:0.8"), freeu(net, "b1=1.2,b2=1.4,s1=0.9,s2=0.2"):
        x0 = net(x, sigma)

Both act at the same joins and commute (the filter is linear, rho a scalar per sample).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from skiptune.adapters import find_adapter
from skiptune.core.errors import InputError, StateError
from skiptune.skip.core import hooks_changed

_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ORDER = ("b1", "b2", "s1", "s2")


@dataclass(frozen=True)
class FreeUConfig:
    """FreeU's factors: backbone b1, b2 and skip s1, s2 for decoder stages 0 and 1; any finite value >= 0.

    String form (:meth:`parse`, ``str``): ``b1=1.2,b2=1.4,s1=0.9,s2=0.2`` or positionally
    ``1.2,1.4,0.9,0.2`` (order b1, b2, s1, s2); ``threshold=T`` optionally sets the filter's box.
    diffusers' FreeU guide uses b1 1.2, b2 1.4, s1 0.9, s2 0.2 for Stable Diffusion 1.5.
    """

    b1: float
    b2: float
    s1: float
    s2: float
    threshold: int = 1

    def __post_init__(self):
        for name in _ORDER:
            value = getattr(self, name)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise InputError(f"FreeU {name} must be a number, got {value!r}") from None
            if not math.isfinite(value) or value < 0:
                raise InputError(f"FreeU {name} must be finite and >= 0, got {value}")
            object.__setattr__(self, name, value)
        if int(self.threshold) != self.threshold or self.threshold < 1:
            raise InputError(f"FreeU threshold must be an integer >= 1, got {self.threshold}")
        object.__setattr__(self, "threshold", int(self.threshold))

    @classmethod
    def parse(cls, text: str) -> FreeUConfig:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        values: dict[str, float] = {}
        try:
            if parts and all("=" not in p for p in parts):
                if len(parts) != 4:
                    raise InputError(f"FreeU needs 4 values b1,b2,s1,s2, got {len(parts)}")
                values = dict(zip(_ORDER, map(float, parts), strict=True))
            else:
                for p in parts:
                    key, sep, value = (s.strip() for s in p.partition("="))
                    if not sep or key not in (*_ORDER, "threshold"):
                        raise InputError(f"unknown FreeU setting {p!r}")
                    values[key] = float(value)
                missing = [k for k in _ORDER if k not in values]
                if missing:
                    raise InputError(f"missing {', '.join(missing)}")
        except ValueError as exc:
            raise InputError(f"cannot read FreeU factors {text!r}: {exc}; write b1=1.2,b2=1.4,s1=0.9,s2=0.2 "
                             "or 1.2,1.4,0.9,0.2") from None
        return cls(**values)

    def factors(self, stage: int) -> tuple[float, float] | None:
        """``(b, s)`` for a decoder stage, or None where FreeU does nothing (stages 2 and up)."""
        return {0: (self.b1, self.s1), 1: (self.b2, self.s2)}.get(stage)

    def __str__(self):
        text = ",".join(f"{k}={getattr(self, k):g}" for k in _ORDER)
        return text + (f",threshold={self.threshold}" if self.threshold != 1 else "")


def _low_frequencies(n: int, threshold: int) -> list[slice]:
    """FFT indices of the frequencies -threshold..threshold-1 on an axis of length n, as slices.

    Slices rather than an index tensor: building the mask then sends nothing from the host to the device.
    """
    if 2 * threshold >= n:
        return [slice(None)]
    return [slice(0, threshold), slice(n - threshold, n)]


def fourier_lowpass(x: torch.Tensor, scale: float, threshold: int = 1) -> torch.Tensor:
    """FreeU's skip filter: multiply the lowest spatial frequencies of ``x`` [..., H, W] by ``scale``.

    ``IFFT2(FFT2(x) * M).real`` with M = scale on the frequencies k_y, k_x in [-threshold, threshold)
    (the box ``[H//2 - t, H//2 + t) x [W//2 - t, W//2 + t)`` after an fftshift) and 1 elsewhere.
    Computed in float32, or float64 for float64 input; returned in x's dtype.
    """
    work = x if x.dtype == torch.float64 else x.to(torch.float32)
    freq = torch.fft.fftn(work, dim=(-2, -1))
    h, w = freq.shape[-2:]
    mask = torch.ones(h, w, dtype=work.dtype, device=x.device)
    for rows in _low_frequencies(h, threshold):
        for cols in _low_frequencies(w, threshold):
            mask[rows, cols] = scale
    return torch.fft.ifftn(freq * mask, dim=(-2, -1)).real.to(x.dtype)


def _join_transform(b: float, s: float, threshold: int):
    def transform(u: torch.Tensor, d: torch.Tensor):
        if b != 1.0:
            half = u.shape[1] // 2
            u = torch.cat([u[:, :half] * b, u[:, half:]], dim=1)
        if s != 1.0:
            d = fourier_lowpass(d, s, threshold)
        return u, d
    return transform


class FreeU:
    """FreeU attached to a network (see the module docstring). A context manager; :meth:`remove` detaches.

    Hooks are registered on construction and removed on exit, also after an exception. A network
    carries at most one FreeU at a time; it may carry a Skip-Tuning rule as well.
    """

    def __init__(self, net: nn.Module, config: FreeUConfig | str):
        self.config = config if isinstance(config, FreeUConfig) else FreeUConfig.parse(config)
        self._structure: tuple | None = None
        adapter = find_adapter(net)
        sites, stages = adapter.sites(net), adapter.stages(net)
        if net in _ACTIVE:
            raise StateError("this network already has FreeU attached; remove it first")
        self._net = weakref.ref(net)
        self._handles = []
        #: names of the joins FreeU acts on, with their stage
        self.sites: list[tuple[str, int]] = []
        hooked: list[str] = []
        try:
            for site, stage in zip(sites, stages, strict=True):
                factors = self.config.factors(stage)
                if factors is None:
                    continue
                self.sites.append((site.name, stage))
                if factors != (1.0, 1.0):
                    self._handles += adapter.attach_join(net, site, _join_transform(*factors, self.config.threshold))
                    hooked.append(site.name)
        except BaseException:
            self.remove()
            raise
        _ACTIVE[net] = self
        if self._handles:
            self._structure = ("freeu", id(net), tuple(hooked))
            hooks_changed(self, self._structure)

    def remove(self) -> None:
        """Detach all hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        net = self._net()
        if net is not None and _ACTIVE.get(net) is self:
            del _ACTIVE[net]
        if self._structure is not None:
            self._structure = None
            hooks_changed(self, None)

    @property
    def active(self) -> bool:
        net = self._net()
        return net is not None and _ACTIVE.get(net) is self

    def __enter__(self) -> FreeU:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"FreeU('{self.config}', sites={len(self.sites)}, active={self.active})"


def freeu(net: nn.Module, config: FreeUConfig | str | None = None, **factors: float) -> FreeU:
    """Attach FreeU to ``net``: ``freeu(net, b1=1.2, b2=1.4, s1=0.9, s2=0.2)`` or ``freeu(net, "1.2,1.4,0.9,0.2")``.

    Returns a handle usable as a context manager.
    """
    if config is not None and factors:
        raise InputError("give the FreeU factors either as a config/string or as keywords, not both")
    return FreeU(net, config if config is not None else FreeUConfig(**factors))
