"""Skip-Tuning rules: how much rho, at which site, at which noise level.

A rule maps (site index i of k sites, innermost first; current sigma) to a positive factor rho
that multiplies the encoder skip d_i where the decoder joins it: ``cat(u_i, rho_i * d_i)``
(seed 003, Def. 3.1). Rules are frozen dataclasses that validate themselves on construction; each
has a compact string form (``str(rule)``) that :func:`parse_rule` reads back:

=================================  ===========================================================
``none``                           untouched (rho = 1 everywhere)
``const:0.8``                      the same rho at every site
``layer:0.7`` / ``layer:0.55:1.0``  linear from rho_bottom (innermost) to rho_top (outermost, 1.0)
``layer:0.55:1.0:paper``           the paper's literal spacing Delta = (top - bottom) / k
``sites:0.6,0.7,...``              one value per site, innermost first
``ramp:down:0.78``                 1 at sigma_min falling linearly to 0.78 at sigma_max
``ramp:up:0.78:0.002:80:log``      0.78 at sigma_min rising to 1 at sigma_max, linear in log sigma
``window:0.5:5.0:layer:0.7``       the inner rule for sigma in [0.5, 5.0], rho = 1 elsewhere
``layer:0.7*ramp:down:0.9``        product of rules (per-site x per-sigma composition)
=================================  ===========================================================

Any finite rho > 0 is allowed: the paper only uses rho < 1, but smaller models may prefer rho > 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from skiptune.core.errors import InputError, StateError

Sigma = float | torch.Tensor | None
Factor = float | torch.Tensor

# Default sigma range of ramps whose range is not given: the EDM sampler's (Karras et al. 2022).
DEFAULT_SIGMA_RANGE = (0.002, 80.0)


def _check_rho(value: float, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{what} must be finite and > 0 (rho scales a skip tensor), got {value}")
    return value


class Rule:
    """Base class. Subclasses implement :meth:`factor` and :meth:`__str__`."""

    #: whether the rule reads sigma (then a sigma must be published on every network call)
    sigma_dependent: bool = False

    def factor(self, i: int, k: int, sigma: Sigma) -> Factor:
        """rho for site ``i`` of ``k`` (0 = innermost) at ``sigma`` (float, 1-D tensor, or None).

        For a tensor sigma the result is a tensor on its device (one rho per sample) or a number; it
        must be computed with tensor operations only, never by reading sigma's values on the host
        (``float()``, ``bool()``, ``.item()``, a Python ``if`` on a tensor): the hooks call this at
        every site of every network call, and on a GPU each such read waits for the device.
        """
        raise NotImplementedError

    def check(self, num_sites: int) -> None:
        """Raise ValueError if the rule cannot apply to a network with ``num_sites`` skip sites."""
        if num_sites < 1:
            raise InputError("the network has no skip sites to tune")

    def with_sigma_range(self, lo: float, hi: float) -> Rule:
        """This rule with unspecified sigma ranges filled in (a sampler's range); default: itself."""
        return self

    @property
    def is_identity(self) -> bool:
        """Whether rho = 1 at every site and sigma (``none``, ``const:1``, ``layer:1:1``, ... are one point)."""
        return False

    def __mul__(self, other: Rule) -> Rule:
        return Product((self, other))


@dataclass(frozen=True)
class Identity(Rule):
    """rho = 1 everywhere: the untouched network."""

    def factor(self, i, k, sigma):
        return 1.0

    def check(self, num_sites):
        pass

    @property
    def is_identity(self) -> bool:
        return True

    def __str__(self):
        return "none"


@dataclass(frozen=True)
class Constant(Rule):
    """The same rho at every site."""

    rho: float

    def __post_init__(self):
        object.__setattr__(self, "rho", _check_rho(self.rho, "const rho"))

    def factor(self, i, k, sigma):
        return self.rho

    @property
    def is_identity(self) -> bool:
        return self.rho == 1.0

    def __str__(self):
        return f"const:{self.rho:g}"


@dataclass(frozen=True)
class Layer(Rule):
    """Linear in depth (seed 003, Def. 3.1): ``rho_i = bottom + (top - bottom) * i / D``.

    Site 0 is the innermost (lowest resolution, first popped). With ``spacing='inclusive'``
    (default) D = k - 1, so the innermost site gets ``bottom`` and the outermost exactly ``top``.
    With ``spacing='paper'`` D = k, the paper's literal Delta rho = (top - bottom)/k, so the
    outermost site gets ``top - (top - bottom)/k``.
    """

    bottom: float
    top: float = 1.0
    spacing: str = "inclusive"

    def __post_init__(self):
        object.__setattr__(self, "bottom", _check_rho(self.bottom, "layer rho_bottom"))
        object.__setattr__(self, "top", _check_rho(self.top, "layer rho_top"))
        if self.spacing not in ("inclusive", "paper"):
            raise InputError(f"layer spacing must be 'inclusive' or 'paper', got {self.spacing!r}")

    def factor(self, i, k, sigma):
        denom = k if self.spacing == "paper" else max(k - 1, 1)
        return self.bottom + (self.top - self.bottom) * i / denom

    @property
    def is_identity(self) -> bool:
        return self.bottom == 1.0 and self.top == 1.0

    def __str__(self):
        tail = ":paper" if self.spacing == "paper" else ""
        return f"layer:{self.bottom:g}:{self.top:g}{tail}"


@dataclass(frozen=True)
class Sites(Rule):
    """One explicit rho per site, innermost first."""

    values: tuple[float, ...]

    def __post_init__(self):
        vals = tuple(_check_rho(v, f"sites value #{n}") for n, v in enumerate(self.values))
        if not vals:
            raise InputError("sites rule needs at least one value")
        object.__setattr__(self, "values", vals)

    def factor(self, i, k, sigma):
        return self.values[i]

    def check(self, num_sites):
        super().check(num_sites)
        if len(self.values) != num_sites:
            raise InputError(f"sites rule has {len(self.values)} values but the network has {num_sites} skip "
                             f"sites: give exactly {num_sites} (see `skiptune info`)")

    @property
    def is_identity(self) -> bool:
        return all(v == 1.0 for v in self.values)

    def __str__(self):
        return "sites:" + ",".join(f"{v:g}" for v in self.values)


def _need_sigma(rule: Rule, sigma: Sigma) -> None:
    if sigma is None:
        raise StateError(f"rule '{rule}' depends on sigma but no sigma was published for this call; call the "
                           "network through a preconditioner or a skiptune denoiser, or wrap the call in "
                           "skiptune.skip.publish_sigma(sigma)")



def _set_sigma_range(rule: Rule) -> None:
    """Check a ramp's optional ``sigma_min``/``sigma_max`` (both or neither, 0 < min < max) and store them as floats."""
    lo, hi = rule.sigma_min, rule.sigma_max
    if (lo is None) != (hi is None):
        raise InputError("give both ramp sigma_min and sigma_max, or neither")
    if lo is not None:
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            raise InputError(f"ramp sigma range must satisfy 0 < sigma_min < sigma_max, got [{lo}, {hi}]")
        object.__setattr__(rule, "sigma_min", lo)
        object.__setattr__(rule, "sigma_max", hi)

@dataclass(frozen=True)
class Ramp(Rule):
    """Time-dependent rho (seed 003, Sec. 5.2, Table 10), the same at every site.

    ``direction='up'`` ("increasing rho"): rho_0 at sigma_min rising linearly to 1 at sigma_max;
    ``'down'`` ("decreasing rho"): 1 at sigma_min falling to rho_0 at sigma_max. Linear in sigma
    (``space='sigma'``, EDM's t = sigma) or in log sigma (``space='log'``); constant outside the
    range. A range left as None is filled from the sampler (:meth:`with_sigma_range`), else
    :data:`DEFAULT_SIGMA_RANGE`.
    """

    direction: str
    rho0: float
    sigma_min: float | None = None
    sigma_max: float | None = None
    space: str = "sigma"
    sigma_dependent = True

    def __post_init__(self):
        if self.direction not in ("up", "down"):
            raise InputError(f"ramp direction must be 'up' or 'down', got {self.direction!r}")
        object.__setattr__(self, "rho0", _check_rho(self.rho0, "ramp rho_0"))
        if self.space not in ("sigma", "log"):
            raise InputError(f"ramp space must be 'sigma' or 'log', got {self.space!r}")
        _set_sigma_range(self)

    def with_sigma_range(self, lo, hi):
        if self.sigma_min is not None:
            return self
        return Ramp(self.direction, self.rho0, lo, hi, self.space)

    def factor(self, i, k, sigma):
        _need_sigma(self, sigma)
        lo, hi = (self.sigma_min, self.sigma_max) if self.sigma_min is not None else DEFAULT_SIGMA_RANGE
        if isinstance(sigma, torch.Tensor):
            s = sigma.to(torch.float64)
            s, lo_, hi_ = (s.clamp_min(1e-30).log(), math.log(lo), math.log(hi)) if self.space == "log" else (s, lo, hi)
            pos = ((s - lo_) / (hi_ - lo_)).clamp(0.0, 1.0)
        else:
            s = float(sigma)
            if self.space == "log":
                s, lo, hi = math.log(max(s, 1e-30)), math.log(lo), math.log(hi)
            pos = min(max((s - lo) / (hi - lo), 0.0), 1.0)
        return _ramp_value(self.direction, self.rho0, pos)  # pos = 0 at sigma_min, 1 at sigma_max

    @property
    def is_identity(self) -> bool:
        return self.rho0 == 1.0

    def __str__(self):
        text = f"ramp:{self.direction}:{self.rho0:g}"
        if self.sigma_min is not None:
            text += f":{self.sigma_min:g}:{self.sigma_max:g}"
        if self.space != "sigma":
            text += f":{self.space}"
        return text


@dataclass(frozen=True)
class Window(Rule):
    """The inner rule while ``lo <= sigma <= hi``, rho = 1 elsewhere (seed 003, Fig. 7)."""

    lo: float
    hi: float
    inner: Rule = field(default_factory=Identity)
    sigma_dependent = True

    def __post_init__(self):
        lo, hi = float(self.lo), float(self.hi)
        if not (math.isfinite(lo) and lo >= 0) or math.isnan(hi):
            raise InputError(f"window bounds must be sigma values >= 0, got [{self.lo}, {self.hi}]")
        if lo > hi:
            raise InputError(f"window lower bound {lo} is above its upper bound {hi}: write window:LO:HI:RULE")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        if not isinstance(self.inner, Rule):
            raise InputError(f"window inner rule must be a Rule, got {self.inner!r}")

    def check(self, num_sites):
        self.inner.check(num_sites)

    def with_sigma_range(self, lo, hi):
        return Window(self.lo, self.hi, self.inner.with_sigma_range(lo, hi))

    def factor(self, i, k, sigma):
        _need_sigma(self, sigma)
        inner = self.inner.factor(i, k, sigma)
        if isinstance(sigma, torch.Tensor):  # per sample, on sigma's device, without reading it
            inside = (sigma >= self.lo) & (sigma <= self.hi)
            if isinstance(inner, torch.Tensor):
                inner = inner.to(torch.float64)
            else:
                inner = torch.full_like(sigma, inner, dtype=torch.float64)
            return torch.where(inside, inner, 1.0)
        return inner if self.lo <= float(sigma) <= self.hi else 1.0

    @property
    def is_identity(self) -> bool:
        return self.inner.is_identity

    def __str__(self):
        return f"window:{self.lo:g}:{self.hi:g}:{self.inner}"


@dataclass(frozen=True)
class Product(Rule):
    """The product of several rules, e.g. a per-site profile times a sigma ramp."""

    rules: tuple[Rule, ...]

    def __post_init__(self):
        flat: list[Rule] = []
        for r in self.rules:
            if not isinstance(r, Rule):
                raise InputError(f"product factors must be Rules, got {r!r}")
            flat.extend(r.rules if isinstance(r, Product) else (r,))
        if not flat:
            raise InputError("product rule needs at least one factor")
        object.__setattr__(self, "rules", tuple(flat))

    @property
    def sigma_dependent(self):  # type: ignore[override]
        return any(r.sigma_dependent for r in self.rules)

    def check(self, num_sites):
        for r in self.rules:
            r.check(num_sites)

    def with_sigma_range(self, lo, hi):
        return Product(tuple(r.with_sigma_range(lo, hi) for r in self.rules))

    def factor(self, i, k, sigma):
        out: Factor = 1.0
        for r in self.rules:
            out = out * r.factor(i, k, sigma)
        return out

    @property
    def is_identity(self) -> bool:
        return all(r.is_identity for r in self.rules)

    def __str__(self):
        return "*".join(str(r) for r in self.rules)


RuleLike = Rule | str | None


def parse_rule(text: str) -> Rule:
    """Read the compact rule syntax (see the module docstring); ValueError naming the problem."""
    if not isinstance(text, str):
        raise InputError(f"rule text must be a string, got {text!r}")
    text = text.strip()
    if not text:
        raise InputError("empty rule: use 'none' for the untouched network")
    parts = [p.strip() for p in text.split("*")]
    if len(parts) > 1:
        return Product(tuple(parse_rule(p) for p in parts))
    name, _, rest = text.partition(":")
    args = rest.split(":") if rest else []
    try:
        if name == "none" and not args:
            return Identity()
        if name == "const" and len(args) == 1:
            return Constant(float(args[0]))
        if name == "layer" and 1 <= len(args) <= 3:
            top = float(args[1]) if len(args) > 1 and args[1] != "" else 1.0
            return Layer(float(args[0]), top, *(args[2:] or ["inclusive"]))
        if name == "sites" and len(args) == 1:
            return Sites(tuple(float(v) for v in args[0].split(",")))
        if name == "ramp" and len(args) in (2, 3, 4, 5):
            space = "sigma"
            if len(args) in (3, 5):
                space = args.pop()
            lo, hi = (float(args[2]), float(args[3])) if len(args) == 4 else (None, None)
            return Ramp(args[0], float(args[1]), lo, hi, space)
        if name == "window" and len(args) >= 3:
            return Window(float(args[0]), float(args[1]), parse_rule(":".join(args[2:])))
    except ValueError as exc:
        if "could not convert" in str(exc):
            raise InputError(f"rule {text!r}: a value is not a number ({exc})") from None
        raise
    known = "none, const:R, layer:BOTTOM[:TOP[:paper]], sites:R1,R2,..., ramp:up|down:R0[:SMIN:SMAX][:log], " \
            "window:LO:HI:RULE, RULE*RULE"
    raise InputError(f"cannot read rule {text!r} (unknown rule name or wrong number of values); rules: {known}")


def canonical_rule(rule: RuleLike) -> Rule:
    """The rule as a point of the rule space: :class:`Identity` for every rule with rho = 1 everywhere.

    ``str(canonical_rule(r))`` is the rule's identity in stored runs: ``none``, ``const:1``,
    ``layer:1:1`` and ``ramp:down:1`` are one point (they give the same images).
    """
    rule = as_rule(rule)
    return Identity() if rule.is_identity else rule


def as_rule(rule: RuleLike) -> Rule:
    """A Rule from a Rule, its string form, or None (= untouched)."""
    if rule is None:
        return Identity()
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        return parse_rule(rule)
    raise InputError(f"expected a skiptune Rule or rule string such as 'layer:0.7', got {rule!r}")


# -- ramps over the sampling step index and over a model's diffusion time -------------------------------------------
#
# Seed 003 (Sec. 5.2, Fig. 11, Table 10) interpolates rho linearly "over time 0 to T" without saying which time. The
# sigma ramps above are linear in sigma (EDM's t = sigma) or in log sigma (the time an EDM or VE network is
# conditioned on: c_noise = ln(sigma)/4, ln(sigma/2)). The two kinds below add the other readings: the position of
# the evaluation in the sampler's grid (``StepRamp``) and the VP SDE time (``VPTimeRamp``: the time a VP-trained
# network is conditioned on, c_noise = (M - 1) t(sigma)). Both keep the existing rules and their strings as they
# are; :func:`parse_rule` is extended below to read them.

# Grid sigmas are kept to 6 significant digits, so that a rule equals the rule parsed from its string.
_GRID_DIGITS = 6


def _ramp_value(direction: str, rho0: float, pos: Factor) -> Factor:
    """rho at position ``pos`` in [0, 1] (0 = time 0, the data end; 1 = time T, the noise end)."""
    if direction == "up":
        return rho0 + (1.0 - rho0) * pos
    return 1.0 + (rho0 - 1.0) * pos


def _check_direction(direction: str) -> None:
    if direction not in ("up", "down"):
        raise InputError(f"ramp direction must be 'up' or 'down', got {direction!r}")


@dataclass(frozen=True)
class StepRamp(Rule):
    """rho linear in the sampling step index (seed 003, Table 10, reading "time" as the step counter).

    ``grid``: the sampler's positive sigmas s_0 > s_1 > ... > s_{M-1} (the sigmas at which steps start,
    the final 0 left out). At s_j the position is ``pos = (M - 1 - j) / (M - 1)``: 0 at the last
    (smallest) sigma, 1 at the first; between grid sigmas (Heun's churned sigma, a solver's intermediate
    point) pos is interpolated linearly in log sigma, and it is clamped to [0, 1] outside the grid. Then
    ``up``: rho = rho_0 + (1 - rho_0) pos, ``down``: rho = 1 + (rho_0 - 1) pos, at every site.

    The rule reads only the published sigma, so it needs no step counter from the sampler: it locates
    sigma in the grid it was built with. String: ``ramp:up:0.7:step:80,17.5152,2.51521,0.169811,0.002``.
    """

    direction: str
    rho0: float
    grid: tuple[float, ...]
    sigma_dependent = True

    def __post_init__(self):
        _check_direction(self.direction)
        object.__setattr__(self, "rho0", _check_rho(self.rho0, "ramp rho_0"))
        try:
            grid = tuple(float(f"{float(s):.{_GRID_DIGITS}g}") for s in self.grid)
        except (TypeError, ValueError):
            raise InputError(f"step ramp grid must be a sequence of sigmas, got {self.grid!r}") from None
        grid = tuple(s for s in grid if s != 0.0)  # a sampler's final sigma = 0 is not a step start
        if len(grid) < 2:
            raise InputError(f"a step ramp needs at least 2 positive grid sigmas, got {self.grid!r}")
        decreasing = all(a > b for a, b in zip(grid, grid[1:], strict=False))
        if not (decreasing and all(math.isfinite(s) and s > 0 for s in grid)):
            raise InputError(f"step ramp grid must be finite sigmas > 0, strictly decreasing, got {self.grid!r}")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "_logs", [math.log(s) for s in reversed(grid)])  # increasing; not a field
        object.__setattr__(self, "_tables", {})  # the log grid on each device it was asked on

    def position(self, sigma: Sigma) -> Factor:
        """pos in [0, 1] of ``sigma`` in the grid (0 at its smallest sigma, 1 at its largest)."""
        _need_sigma(self, sigma)
        m = len(self.grid)
        logs = self._logs
        if isinstance(sigma, torch.Tensor):
            table = self._tables.get(sigma.device)
            if table is None:  # built once per device, not at every site of every call
                table = self._tables[sigma.device] = torch.tensor(logs, dtype=torch.float64, device=sigma.device)
            s = sigma.to(torch.float64).clamp_min(1e-30).log().clamp(table[0], table[-1])
            hi = torch.searchsorted(table, s).clamp(1, m - 1)
            lo = hi - 1
            frac = (s - table[lo]) / (table[hi] - table[lo])
            return (lo.to(torch.float64) + frac) / (m - 1)
        s = min(max(math.log(max(float(sigma), 1e-30)), logs[0]), logs[-1])
        hi = next(j for j in range(1, m) if s <= logs[j])
        frac = (s - logs[hi - 1]) / (logs[hi] - logs[hi - 1])
        return (hi - 1 + frac) / (m - 1)

    def factor(self, i, k, sigma):
        return _ramp_value(self.direction, self.rho0, self.position(sigma))

    @property
    def is_identity(self) -> bool:
        return self.rho0 == 1.0

    def __str__(self):
        return f"ramp:{self.direction}:{self.rho0:g}:step:" + ",".join(f"{s:g}" for s in self.grid)


@dataclass(frozen=True)
class VPTimeRamp(Rule):
    """rho linear in the VP SDE time t(sigma) (seed 003, Table 10, reading "time" as a VP model's time).

    t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) / beta_d, the inverse of
    sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (EDM Table 1; beta_min 0.1, beta_d 19.9, the
    continuous limit of DDPM's linear betas 1e-4..0.02 over 1000 steps). pos = (t(sigma) - t(sigma_min)) /
    (t(sigma_max) - t(sigma_min)) clamped to [0, 1]; ``up`` / ``down`` as for :class:`Ramp`. A range left
    as None is filled from the sampler, else :data:`DEFAULT_SIGMA_RANGE`. String:
    ``ramp:down:0.78:vp`` or ``ramp:down:0.78:0.002:80:vp``.
    """

    direction: str
    rho0: float
    sigma_min: float | None = None
    sigma_max: float | None = None
    sigma_dependent = True
    beta_min = 0.1  # EDM's VP schedule (class constants: the string form does not carry them)
    beta_d = 19.9

    def __post_init__(self):
        _check_direction(self.direction)
        object.__setattr__(self, "rho0", _check_rho(self.rho0, "ramp rho_0"))
        _set_sigma_range(self)

    def with_sigma_range(self, lo, hi):
        if self.sigma_min is not None:
            return self
        return VPTimeRamp(self.direction, self.rho0, lo, hi)

    def vp_time(self, sigma: Sigma) -> Factor:
        """t(sigma) of the VP SDE (float or float64 tensor)."""
        b0, bd = self.beta_min, self.beta_d
        if isinstance(sigma, torch.Tensor):
            s = sigma.to(torch.float64)
            return ((b0 * b0 + 2 * bd * torch.log1p(s * s)).sqrt() - b0) / bd
        return (math.sqrt(b0 * b0 + 2 * bd * math.log1p(float(sigma) ** 2)) - b0) / bd

    def factor(self, i, k, sigma):
        _need_sigma(self, sigma)
        lo, hi = (self.sigma_min, self.sigma_max) if self.sigma_min is not None else DEFAULT_SIGMA_RANGE
        t_lo, t_hi = self.vp_time(lo), self.vp_time(hi)
        t = self.vp_time(sigma)
        if isinstance(t, torch.Tensor):
            pos = ((t - t_lo) / (t_hi - t_lo)).clamp(0.0, 1.0)
        else:
            pos = min(max((t - t_lo) / (t_hi - t_lo), 0.0), 1.0)
        return _ramp_value(self.direction, self.rho0, pos)

    @property
    def is_identity(self) -> bool:
        return self.rho0 == 1.0

    def __str__(self):
        text = f"ramp:{self.direction}:{self.rho0:g}"
        if self.sigma_min is not None:
            text += f":{self.sigma_min:g}:{self.sigma_max:g}"
        return text + ":vp"


_parse_rule_without_time_ramps = parse_rule


def parse_rule(text: str) -> Rule:  # noqa: F811 -- extends the parser above with the step and VP-time ramps
    """Read the compact rule syntax (module docstring), plus ``ramp:DIR:R0:step:S0,S1,...`` (:class:`StepRamp`)
    and ``ramp:DIR:R0[:SMIN:SMAX]:vp`` (:class:`VPTimeRamp`)."""
    if isinstance(text, str) and "*" not in text and not text.strip().startswith("window:"):
        name, _, rest = text.strip().partition(":")
        args = rest.split(":") if rest else []
        if name == "ramp" and len(args) == 4 and args[2] == "step":
            try:
                return StepRamp(args[0], float(args[1]), tuple(float(v) for v in args[3].split(",")))
            except ValueError as exc:
                if isinstance(exc, InputError):
                    raise
                raise InputError(f"rule {text!r}: a value is not a number ({exc})") from None
        if name == "ramp" and len(args) in (3, 5) and args[-1] == "vp":
            try:
                lo, hi = (float(args[2]), float(args[3])) if len(args) == 5 else (None, None)
                return VPTimeRamp(args[0], float(args[1]), lo, hi)
            except ValueError as exc:
                if isinstance(exc, InputError):
                    raise
                raise InputError(f"rule {text!r}: a value is not a number ({exc})") from None
    return _parse_rule_without_time_ramps(text)
