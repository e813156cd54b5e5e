"""A restricted unpickler for EDM pickles: it resolves only an allow-list of globals and runs no code.

EDM pickles rebuild every object through ``torch_utils.persistence``, whose stock loader executes the
Python source embedded in the file. :class:`SafeUnpickler` instead turns each persistent object into
an inert :class:`PersistentRecord` (class name and pickled state), tensors through torch's
weights-only loader, and refuses every other global with :class:`UnsafePickleError`. The allow-list
of persistent class names is a security policy, so it is spelled out here; :mod:`skiptune.io.edm_pickle`
rebuilds networks from the records and :mod:`skiptune.metrics.edm_pickle` reads EDM's Inception pickle.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from skiptune.core.errors import UnsafePickleError

# Persistent classes of the EDM code base: network classes we rebuild, and training helpers that
# are kept as inert records (their code is never run; loading a network does not need them).
NETWORK_CLASSES = frozenset({"EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond", "SongUNet", "DhariwalUNet"})
LAYER_CLASSES = frozenset({"Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding",
                           "FourierEmbedding"})
INERT_CLASSES = frozenset({"EDMLoss", "VPLoss", "VELoss", "AugmentPipe"})
# torch containers that EDM networks use as plain (non-persistent) modules
_TORCH_MODULES = {("torch.nn.modules.container", n) for n in ("ModuleDict", "ModuleList", "Sequential")}


@dataclass
class PersistentRecord:
    """An EDM persistent object, not constructed: its class name and pickled state."""

    class_name: str
    state: dict = field(default_factory=dict)
    module_src_len: int = 0

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})


class ModuleRecord:
    """A plain torch container module (ModuleDict, ...), kept as its state only.

    Pickle creates it through ``NEWOBJ`` (``cls.__new__(cls)``) and fills it with ``BUILD``.
    """

    class_name = "Module"
    state: dict = {}

    def __setstate__(self, state):
        self.state = dict(state) if isinstance(state, dict) else {}


def _container_record(name: str) -> type[ModuleRecord]:
    return type(f"{name}Record", (ModuleRecord,), {"class_name": name})


class _EasyDict(dict):
    """Stand-in for ``dnnlib.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _reconstruct_persistent(meta: dict) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise UnsafePickleError("malformed EDM persistent object (expected meta dict with type='class')")
    name = meta["class_name"]
    if name not in NETWORK_CLASSES | LAYER_CLASSES | INERT_CLASSES:
        raise UnsafePickleError(f"refusing to rebuild unknown persistent class {name!r}: the safe loader knows "
                                f"{sorted(NETWORK_CLASSES | LAYER_CLASSES | INERT_CLASSES)}; use "
                                "trust_code=True / --trust-code only if you trust this file")
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise UnsafePickleError(f"malformed state for persistent class {name!r}")
    return PersistentRecord(name, dict(state), len(meta.get("module_src") or ""))


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (protocols 0-1) restricted to the container records above."""
    if not (isinstance(cls, type) and issubclass(cls, ModuleRecord)) or base is not object:
        raise UnsafePickleError(f"refusing to reconstruct {cls!r}")
    return cls.__new__(cls)


def _load_storage_bytes(data: bytes):
    """``torch.storage._load_from_bytes`` through torch's weights-only unpickler (no code runs)."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise UnsafePickleError(f"refusing a tensor storage that is not a plain torch tensor blob: {exc}") from None


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    if backward_hooks:
        raise UnsafePickleError("refusing a tensor with backward hooks")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                           collections.OrderedDict())


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, *rest):
    if backward_hooks:
        raise UnsafePickleError("refusing a parameter with backward hooks")
    return nn.Parameter(data, requires_grad=requires_grad)


def _numpy_scalar(dtype, data=None):
    import numpy as np
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"refusing numpy scalar of dtype {dtype!r}")
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_dtype(*args):
    import numpy as np
    d = np.dtype(*args[:1])
    if d.hasobject:
        raise UnsafePickleError("refusing numpy object dtype")
    return d


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("builtins", "object"): object,
        ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy", "dtype"): _numpy_dtype,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }
    for mod, name in _TORCH_MODULES:
        allowed[(mod, name)] = _container_record(name)
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and never imports modules from the file."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}': not an EDM network component. The safe loader "
                "never executes code from a checkpoint; if you trust this file, pass trust_code=True "
                "(--trust-code)") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refusing persistent id {pid!r} (not an EDM network pickle)")
