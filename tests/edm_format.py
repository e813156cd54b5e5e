"""Writers of pickles in the EDM network-pickle format, for tests (no NVlabs code involved).

An EDM pickle stores every persistent object as ``torch_utils.persistence._reconstruct_persistent_obj
(meta)`` with ``meta = dict(type='class', version=6, module_src=<source>, class_name=<name>,
state=<__dict__ with _init_args/_init_kwargs>)``; torch containers, parameters and tensors are
pickled the ordinary way. We emulate that with ``Pickler.reducer_override`` and stand-in modules
registered in ``sys.modules`` only while dumping.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types

import torch

PERSISTENT = {"EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond", "SongUNet", "DhariwalUNet", "UNetBlock",
              "Linear", "Conv2d", "GroupNorm", "PositionalEmbedding", "FourierEmbedding"}


def _placeholder(meta):  # never called by the loader under test
    raise AssertionError("not to be called")


class InertRecord:
    """Stand-in for a training helper object (EDMLoss, AugmentPipe) in the pickle."""

    def __init__(self, class_name, init_kwargs, module_src="# training helper source\n"):
        self.class_name = class_name
        self.init_kwargs = init_kwargs
        self.module_src = module_src


class EasyDict(dict):
    pass


@contextlib.contextmanager
def fake_edm_modules():
    mods = {"torch_utils": types.ModuleType("torch_utils"),
            "torch_utils.persistence": types.ModuleType("torch_utils.persistence"),
            "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": types.ModuleType("dnnlib.util")}
    _placeholder.__module__ = "torch_utils.persistence"
    _placeholder.__qualname__ = _placeholder.__name__ = "_reconstruct_persistent_obj"
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _placeholder
    EasyDict.__module__ = "dnnlib.util"
    mods["dnnlib.util"].EasyDict = EasyDict
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _meta(class_name, state, module_src):
    return dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)


class EDMStylePickler(pickle.Pickler):
    def __init__(self, f, top, top_kwargs, module_src):
        super().__init__(f, protocol=pickle.HIGHEST_PROTOCOL)
        self.top, self.top_kwargs, self.module_src = top, top_kwargs, module_src

    def reducer_override(self, obj):
        if isinstance(obj, InertRecord):
            state = {"_init_args": (), "_init_kwargs": obj.init_kwargs}
            return _placeholder, (_meta(obj.class_name, state, obj.module_src),)
        if isinstance(obj, torch.nn.Module) and type(obj).__name__ in PERSISTENT:
            state = {k: v for k, v in obj.__dict__.items() if k != "skiptune_config"}
            mods = dict(state["_modules"])
            mods.pop("joins", None)  # our parameter-free join modules are not part of EDM's layout
            state["_modules"] = mods
            state["_init_args"] = ()
            state["_init_kwargs"] = dict(self.top_kwargs) if obj is self.top else {}
            return _placeholder, (_meta(type(obj).__name__, state, self.module_src),)
        return NotImplemented


def write_edm_pickle(path, net, kwargs, module_src="# networks.py source\n", extra=None):
    """Write ``dict(ema=net, loss_fn=..., augment_pipe=None, dataset_kwargs=...)`` the EDM way."""
    data = dict(ema=net, loss_fn=InertRecord("EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5)),
                augment_pipe=None)
    with fake_edm_modules():
        data["dataset_kwargs"] = EasyDict(path="datasets/x.zip", use_labels=False)
        data.update(extra or {})
        with open(path, "wb") as f:
            EDMStylePickler(f, net, kwargs, module_src).dump(data)
