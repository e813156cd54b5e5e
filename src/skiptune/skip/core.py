"""Attaching a Skip-Tuning rule to a network: ``with skip_tuning(net, "layer:0.7"): ...``."""

from __future__ import annotations

import weakref

import torch
from torch import nn

from skiptune.adapters import MODES, SkipSite, find_adapter
from skiptune.core.errors import InputError, StateError
from skiptune.core.sigma import current_sigma
from skiptune.skip.rules import DEFAULT_SIGMA_RANGE, Rule, RuleLike, as_rule

_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def skip_sites(net: nn.Module) -> list[SkipSite]:
    """The network's skip sites, innermost first (ValueError if the architecture is unknown)."""
    return find_adapter(net).sites(net)


def _uniform(sigma: torch.Tensor) -> float | None:
    """The single value of a 1-D sigma tensor if all entries are equal, else None."""
    first = sigma[0]
    if sigma.numel() == 1 or bool((sigma == first).all()):
        return float(first)
    return None


class SkipTuning:
    """An attached rule. Use as a context manager, or call :meth:`remove` when done.

    A rule with rho = 1 everywhere (``none``, ``const:1``, ...) attaches nothing and works on any
    network, with or without known skip sites.

    Hooks are registered on construction and removed on exit, also after an exception; afterwards
    the network computes exactly what it did before. A network carries at most one SkipTuning at a
    time (compose rules with ``*`` instead of stacking).
    """

    def __init__(self, net: nn.Module, rule: RuleLike, mode: str = "concat",
                 sigma_range: tuple[float, float] | None = None):
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        rule = as_rule(rule)
        self._net = weakref.ref(net)
        self._handles = []
        if rule.is_identity:  # rho = 1 everywhere: nothing to attach, on any network
            self.rule, self.mode, self.sites, self.adapter = rule, mode, [], None
            return
        adapter = find_adapter(net)
        if mode not in adapter.modes:
            raise InputError(f"mode {mode!r} is not available for {adapter.name}; available: {adapter.modes}")
        sites = adapter.sites(net)
        rule.check(len(sites))
        self.rule: Rule = rule.with_sigma_range(*(sigma_range or DEFAULT_SIGMA_RANGE))
        self.mode = mode
        self.sites = sites
        self.adapter = adapter
        if net in _ACTIVE:
            raise StateError("this network already has an active skip tuning; remove it first, or combine "
                               "rules into one with '*' (e.g. 'layer:0.7*ramp:down:0.9')")
        try:
            for site in sites:
                self._handles += adapter.attach(net, site, mode, self._scale_fn(site.index))
            if self.rule.sigma_dependent:
                self._handles += adapter.attach_sigma(net)
        except BaseException:
            self._remove_handles()
            raise
        _ACTIVE[net] = self

    def _scale_fn(self, index: int):
        rule, k = self.rule, len(self.sites)
        if not rule.sigma_dependent:
            rho = float(rule.factor(index, k, None))
            return lambda: rho

        def scale():
            sigma = current_sigma()
            if sigma is not None:
                value = _uniform(sigma)
                sigma = value if value is not None else sigma
            return rule.factor(index, k, sigma)
        return scale

    def rhos(self, sigma: float | None = None) -> list[float]:
        """Per-site rho at ``sigma`` (needed only for sigma-dependent rules)."""
        return [float(self.rule.factor(s.index, len(self.sites), sigma)) for s in self.sites]

    def _remove_handles(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def remove(self) -> None:
        """Detach all hooks (idempotent)."""
        self._remove_handles()
        net = self._net()
        if net is not None and _ACTIVE.get(net) is self:
            del _ACTIVE[net]

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
