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

import pickle
from typing import Any

import torch
from torch import nn

from skiptune.core.errors import CheckpointError, UnsafePickleError
from skiptune.core.safe_pickle import ModuleRecord, PersistentRecord, SafeUnpickler
from skiptune.io.uvit import file_contents, load_strict
from skiptune.nets.precond import PRECOND_CLASSES
from skiptune.nets.presets import build_network


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
    return load_strict(net, collect_tensors(record), "checkpoint", f"{record.class_name}({kwargs})")


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
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError) as exc:
            what = file_contents(path)
            if what != "a Python pickle":
                raise CheckpointError(f"{path}: not an EDM network pickle: it is {what}") from None
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
