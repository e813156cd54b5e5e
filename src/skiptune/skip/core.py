"""Attaching a Skip-Tuning rule to a network: ``with skip_tuning(net, "layer:0.7"): ...``.

How rho reaches the hooks, without ever waiting for the device:

- a rule that does not read sigma gives one number per site, computed when it is attached;
- a sigma-dependent rule is evaluated at a Python number when the call's sigma is one value known
  on the host: the sigma argument of the tuned network (our preconditioners and denoisers, called by
  a sampler, which marks its sigma vector with :func:`~skiptune.core.sigma.mark_uniform`) or a
  publication with a known value. Otherwise (per-sample sigmas, a bare tensor) it is evaluated on the
  published sigma tensor with tensor operations, one rho per sample, on the tensor's device;
- under ``torch.compile`` the hooks use tensors only: per-site rho is read from a buffer (so a new
  rule of the same kind reuses the compiled code; :meth:`SkipTuning.set_rule` changes it in place)
  and sigma-dependent rho is computed in the graph from the published sigma tensor.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn

from skiptune.adapters import MODES, SkipSite, find_adapter
from skiptune.core.errors import InputError, StateError
from skiptune.core.sigma import current_publication, set_hook_token, uniform_value
from skiptune.skip.rules import DEFAULT_SIGMA_RANGE, Rule, RuleLike, as_rule

_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STRUCTURES: dict[int, tuple] = {}  # id(attachment) -> what it hooks (network, kind, mode)
_TOKENS: dict[frozenset, int] = {frozenset(): 0}  # no hooks: token 0, the initial one


def hooks_changed(owner: object, structure: tuple | None) -> None:
    """Record that ``owner`` attached hooks of ``structure`` (None: removed them).

    Each set of structures gets one token (:func:`skiptune.core.sigma.set_hook_token`): compiled
    networks that publish sigma are re-checked when it changes, and reuse their code when a set
    seen before comes back (a new rule of the same kind, on the same network, in the same mode).
    """
    if structure is None:
        _STRUCTURES.pop(id(owner), None)
    else:
        _STRUCTURES[id(owner)] = structure
    set_hook_token(_TOKENS.setdefault(frozenset(_STRUCTURES.values()), len(_TOKENS)))


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def skip_sites(net: nn.Module) -> list[SkipSite]:
    """The network's skip sites, innermost first (ValueError if the architecture is unknown)."""
    return find_adapter(net).sites(net)


class _CallSigma(threading.local):
    def __init__(self):
        self.stack: list[float | None] = []


def _device(net: nn.Module) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")


class SkipTuning:
    """An attached rule. Use as a context manager, or call :meth:`remove` when done.

    A rule with rho = 1 everywhere (``none``, ``const:1``, ...) attaches nothing and works on any
    network, with or without known skip sites.

    Hooks are registered on construction and removed on exit, also after an exception; afterwards
    the network computes exactly what it did before. A network carries at most one SkipTuning at a
    time (compose rules with ``*`` instead of stacking).

    With ``torch.compile``: attach the rule to the network that was compiled (or the module it
    wraps); a compiled preconditioner (which publishes sigma inside) notices rules attached or removed
    after it was first run. A compiled bare UNet does not: ``torch.compile`` ignores hooks added to
    modules that had none when it traced them, so attach before its first call, or call
    ``torch._dynamo.reset()`` after attaching.
    """

    def __init__(self, net: nn.Module, rule: RuleLike, mode: str = "concat",
                 sigma_range: tuple[float, float] | None = None):
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        rule = as_rule(rule)
        self._net = weakref.ref(net)
        self._handles = []
        self._sigma_range = sigma_range or DEFAULT_SIGMA_RANGE
        if rule.is_identity:  # rho = 1 everywhere: nothing to attach, on any network
            self.rule, self.mode, self.sites, self.adapter = rule, mode, [], None
            return
        adapter = find_adapter(net)
        if mode not in adapter.modes:
            raise InputError(f"mode {mode!r} is not available for {adapter.name}; available: {adapter.modes}")
        sites = adapter.sites(net)
        rule.check(len(sites))
        self.rule: Rule = rule.with_sigma_range(*self._sigma_range)
        self.mode = mode
        self.sites = sites
        self.adapter = adapter
        #: sigma of the tuned network's current call when it is one known number (per thread; calls may nest)
        self._call_sigma = _CallSigma()
        #: per-site rho of a sigma-free rule: Python numbers for eager calls, a tensor for compiled code
        self._values = self._site_values(self.rule)
        self._table = torch.tensor(self._values or [1.0] * len(sites), dtype=torch.float64, device=_device(net))
        if net in _ACTIVE:
            raise StateError("this network already has an active skip tuning; remove it first, or combine "
                               "rules into one with '*' (e.g. 'layer:0.7*ramp:down:0.9')")
        try:
            for site in sites:
                self._handles += adapter.attach(net, site, mode, self._scale_fn(site.index))
            if self.rule.sigma_dependent:
                self._handles += adapter.attach_sigma(net)
                if adapter.sigma_argument(net):
                    self._handles += self._attach_call_sigma(net)
        except BaseException:
            self._remove_handles()
            raise
        _ACTIVE[net] = self
        hooks_changed(self, ("skip", id(net), mode, self.rule.sigma_dependent))

    def _site_values(self, rule: Rule) -> list[float]:
        """Per-site rho of a sigma-free rule (empty for a sigma-dependent one)."""
        if rule.sigma_dependent:
            return []
        k = len(self.sites)
        return [float(rule.factor(s.index, k, None)) for s in self.sites]

    def _scale_fn(self, index: int):
        k = len(self.sites)
        if not self.rule.sigma_dependent:
            values, table = self._values, self._table

            def constant():
                return table[index] if _compiling() else values[index]
            return constant

        call_sigma = self._call_sigma

        def scale():
            rule = self.rule
            if _compiling():  # tensors only: sigma as published inside the compiled network
                publication = current_publication()
                return rule.factor(index, k, None if publication is None else publication.tensor)
            stack = call_sigma.stack
            value = stack[-1] if stack else None
            if value is None:
                publication = current_publication()
                if publication is None:
                    return rule.factor(index, k, None)  # raises: no sigma
                value = publication.value
                if value is None:  # one sigma per sample, or not known on the host: per-sample rho on the device
                    return rule.factor(index, k, publication.tensor)
            return rule.factor(index, k, value)
        return scale

    def _attach_call_sigma(self, net: nn.Module) -> list:
        """Hooks on the network itself that note its sigma argument while it runs, when that is one number
        known on the host. It is the sigma every site of this call sees, also where the network publishes
        its own (float32) copy of it inside its forward."""
        call_sigma = self._call_sigma

        def enter(module, args, kwargs):
            if not _compiling():
                call_sigma.stack.append(uniform_value(args[1] if len(args) > 1 else kwargs.get("sigma")))

        def leave(module, args, kwargs, output):
            if not _compiling() and call_sigma.stack:
                call_sigma.stack.pop()

        return [net.register_forward_pre_hook(enter, with_kwargs=True),
                net.register_forward_hook(leave, with_kwargs=True, always_call=True)]

    def set_rule(self, rule: RuleLike) -> None:
        """Replace the attached rule by another of the same kind, in place (no hooks change).

        Both must be sigma-free (per-site rho: ``const``, ``layer``, ``sites`` and their products) or
        both sigma-dependent. Per-site rho is written into the existing buffer, so code compiled with
        ``torch.compile`` runs on without recompiling.
        """
        rule = as_rule(rule)
        if self.adapter is None:
            raise StateError("this skip tuning attached nothing (its rule is the identity); attach the new rule "
                             "with skip_tuning instead")
        rule.check(len(self.sites))
        rule = rule.with_sigma_range(*self._sigma_range)
        if rule.sigma_dependent != self.rule.sigma_dependent:
            raise InputError(f"cannot change rule '{self.rule}' into '{rule}' in place: one depends on sigma and the "
                             "other does not; remove this skip tuning and attach the new rule")
        values = self._site_values(rule)
        if values:
            self._values[:] = values
            with torch.no_grad():
                self._table.copy_(torch.tensor(values, dtype=self._table.dtype))
        self.rule = rule

    def rhos(self, sigma: float | None = None) -> list[float]:
        """Per-site rho at ``sigma`` (needed only for sigma-dependent rules)."""
        return [float(self.rule.factor(s.index, len(self.sites), sigma)) for s in self.sites]

    def _remove_handles(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def remove(self) -> None:
        """Detach all hooks (idempotent)."""
        had = bool(self._handles)
        self._remove_handles()
        net = self._net()
        if net is not None and _ACTIVE.get(net) is self:
            del _ACTIVE[net]
        if had:
            hooks_changed(self, None)

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> SkipTuning:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"SkipTuning(rule='{self.rule}', mode='{self.mode}', sites={len(self.sites)}, active={self.active})"


def skip_tuning(net: nn.Module, rule: RuleLike, mode: str = "concat",
                sigma_range: tuple[float, float] | None = None) -> SkipTuning:
    """Attach ``rule`` to ``net``'s skip connections; returns a handle usable as a context manager.

    ``rule`` is a :class:`~skiptune.skip.rules.Rule` or its string form (``"layer:0.7"``);
    ``mode`` is ``concat`` (default), ``residual`` or ``norm`` (see :data:`skiptune.adapters.base.MODE_HELP`);
    ``sigma_range`` fills ramps whose sigma range is unspecified (default 0.002..80).
    """
    return SkipTuning(net, rule, mode=mode, sigma_range=sigma_range)
