"""Safe loading of EDM network pickles (``dict(ema=..., loss_fn=..., augment_pipe=..., ...)``).

EDM pickles rebuild every network object through ``torch_utils.persistence.
_reconstruct_persistent_obj(meta)``, where ``meta`` carries the class name, the full source code of
its module, and the object state; the stock loader ``exec``s that source, i.e. runs arbitrary code.
:func:`load_edm_pickle` never does: a restricted unpickler resolves only an allow-list of globals,
turns each persistent object into an inert :class:`PersistentRecord` (class name + state), and
rebuilds the known network classes as *our* modules from their recorded constructor kwargs and
tensors. Any other global or class is refused with :class:`UnsafePickleError` naming it.

``trust_code=True`` uses Python's stock unpickler instead (needs NVlabs' ``torch_utils`` and
``dnnlib`` importable, and executes code from the file): only for files you trust.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from skiptune.nets.precond import PRECOND_CLASSES
from skiptune.nets.presets import build_network


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references something the safe loader will not construct."""


class CheckpointError(ValueError):
    """A checkpoint is corrupt, truncated, or not of a supported kind."""


# Persistent classes of the EDM code base: network classes we rebuild, and training helpers that
# are kept as inert records (their code is never run; loading a network does not need them).
NETWORK_CLASSES = frozenset({*PRECOND_CLASSES, "SongUNet", "DhariwalUNet"})
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


def collect_tensors(record, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a record tree into a state dict (parameters and persistent buffers)."""
    out: dict[str, torch.Tensor] = {}
    state = record.state
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    for kind in ("_parameters", "_buffers"):
        for name, value in (state.get(kind) or {}).items():
            if value is None or (kind == "_buffers" and name in non_persistent):
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
            out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, (PersistentRecord, ModuleRecord)):
            raise CheckpointError(f"module {prefix}{name} is an unexpected {type(child).__name__}")
        out.update(collect_tensors(child, f"{prefix}{name}."))
    return out


def rebuild_network(record: PersistentRecord) -> nn.Module:
    """Build our module for an EDM network record and load its tensors with ``strict=True``."""
    if record.class_name not in PRECOND_CLASSES:
        raise CheckpointError(f"expected a preconditioned EDM network (one of {sorted(PRECOND_CLASSES)}), "
                              f"got {record.class_name!r}")
    if record.init_args:
        raise CheckpointError(f"{record.class_name} was built with positional arguments; expected keywords only")
    kwargs = record.init_kwargs
    try:
        net = build_network(record.class_name, kwargs)
    except TypeError as exc:
        raise CheckpointError(
            f"cannot build {record.class_name} from the checkpoint's arguments {kwargs}: {exc}") from None
    state = collect_tensors(record)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint tensors do not match {record.class_name}({kwargs}): {exc}") from None
    return net


def read_edm_pickle(path, trust_code: bool = False) -> Any:
    """Unpickle an EDM file; safely (records, nothing executed) unless ``trust_code``."""
    with open(path, "rb") as f:
        if trust_code:
            try:
                return pickle.load(f)  # noqa: S301 - explicit user opt-in, documented as unsafe
            except ModuleNotFoundError as exc:
                raise ModuleNotFoundError(
                    f"{exc}: trust_code=True uses EDM's own classes, so NVlabs/edm must be on PYTHONPATH. The "
                    "default safe loader needs no EDM code: drop trust_code / --trust-code") from None
        try:
            return SafeUnpickler(f).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise CheckpointError(f"{path}: not a readable EDM network pickle (corrupt or truncated?): "
                                  f"{type(exc).__name__}: {exc}") from None


def load_edm_pickle(path, key: str = "ema", trust_code: bool = False) -> nn.Module:
    """Our network module for the ``key`` entry (default ``ema``) of an EDM network pickle."""
    data = read_edm_pickle(path, trust_code=trust_code)
    obj = data.get(key) if isinstance(data, dict) else data
    if obj is None:
        keys = sorted(data) if isinstance(data, dict) else []
        raise CheckpointError(f"{path}: no '{key}' network in this pickle (keys: {keys})")
    if isinstance(obj, PersistentRecord):
        return rebuild_network(obj)
    if trust_code and isinstance(obj, nn.Module) and type(obj).__name__ in PRECOND_CLASSES:
        # EDM's own object: rebuild as ours so that Skip-Tuning adapters apply.
        net = build_network(type(obj).__name__, dict(obj.init_kwargs))
        net.load_state_dict(obj.state_dict(), strict=True)
        return net
    raise CheckpointError(f"{path}: entry '{key}' is a {type(obj).__name__}, not an EDM network")
