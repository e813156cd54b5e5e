"""FID vs rho U-curves per NFE, drawn from the sweep runs already in the results store (seed 003, Fig. 4).

Seed 003, Fig. 4: FID against rho for each number of function evaluations; every curve is
U-shaped and its minimum moves towards 1 as the NFE grows. This analysis generates nothing: it
reads the complete sweep runs (``skiptune sweep``, ``skiptune demo`` and the FID analyses all store
one run per (sampler, options, NFE, rule, seed set)) of one model and one feature network, groups
them by (sampler, options, NFE, grid, mode, reference statistics, samples per set, rule), and
averages each group over its seed sets: mean and the Student-t interval mean +- t_{0.975,S-1} s/sqrt(S).
``diff`` is the paired difference to the untouched network over the seed sets both have.
Only one-number rules are on the curves by default (``none``, ``const:rho``, ``layer:rho_bottom[:rho_top]``);
the x value is rho (const) or rho_bottom (layer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from torch import nn

from skiptune.analysis.base import AnalysisResult
from skiptune.analysis.scoring import estimate_columns
from skiptune.core.checksums import state_dict_sha256
from skiptune.core.errors import InputError
from skiptune.core.stats import t_interval
from skiptune.experiment import POINT_KIND
from skiptune.sampling import revision_fields
from skiptune.skip import as_rule
from skiptune.store import Store

NAME = "sweep"
HELP = "FID vs rho U-curves per NFE from the sweep runs in the results store (Fig. 4)"
CURVE_FAMILIES = ("none", "const", "layer")
#: the feature network that ``skiptune analyze`` scores with unless ``--features`` says otherwise
DEFAULT_FEATURES = "digits-classifier"


def _rho(rule: str) -> float | None:
    r = as_rule(rule)
    if str(r) == "none":
        return 1.0
    v = getattr(r, "bottom", getattr(r, "rho", None))
    return None if v is None else float(v)


def _label(cfg: dict, options: dict) -> str:
    """``heun``, ``edm_sde(S_churn=2)``, ``heun grid=logsnr mode=residual`` (non-default grid and mode shown)."""
    text = cfg["sampler"]
    if options:
        text += "(" + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items()) + ")"
    for name, default in (("grid", "edm"), ("mode", "concat")):
        value = cfg.get(name)
        if value not in (None, default):
            text += f" {name}={value}"
    return text


@dataclass(frozen=True)
class SweepConfig:
    """Which stored sweep runs the curves are drawn from (every setting of :func:`run_sweep`).

    ``model_id``: sha256 of the model's weights (None: that of the network given to :func:`run_sweep`);
    ``features``: the feature network of the FIDs (``digits-classifier``, the default of ``skiptune analyze
    --features``; None or ``""``: any); ``samplers`` and ``nfes``: only these (empty: all);
    ``all_rules``: also tabulate rules that are not on a rho axis (ramps, windows, products).
    Validated on construction (:class:`~skiptune.core.errors.InputError` naming the setting).
    """

    model_id: str | None = None
    features: str | None = DEFAULT_FEATURES
    samplers: tuple[str, ...] = ()
    nfes: tuple[int, ...] = ()
    all_rules: bool = False

    def __post_init__(self):
        if self.model_id is not None and not (isinstance(self.model_id, str) and self.model_id.strip()):
            raise InputError(f"SweepConfig.model_id must be the sha256 of a model's weights (or None for the "
                             f"network's own), got {self.model_id!r}")
        if self.features is not None and not isinstance(self.features, str):
            raise InputError(f"SweepConfig.features must be a feature network name (or None for any), "
                             f"got {self.features!r}")
        samplers = _sequence("samplers", self.samplers, "sampler names such as ('heun',)")
        if not all(isinstance(s, str) and s for s in samplers):
            raise InputError(f"SweepConfig.samplers must hold sampler names such as 'heun' (empty: all), "
                             f"got {self.samplers!r}")
        object.__setattr__(self, "samplers", samplers)
        object.__setattr__(self, "nfes", _positive_ints(_sequence("nfes", self.nfes, "integers such as (9, 35)")))

    def filters(self, model_id: str) -> dict[str, str]:
        """The store filter of the runs read: sweep points of this model (and feature network)."""
        return {"kind": POINT_KIND, "model": model_id, **({"features": self.features} if self.features else {})}

    def result_config(self, model_id: str) -> dict:
        """The ``config`` of the stored result."""
        return {"model": model_id, "features": self.features or "any", "samplers": list(self.samplers),
                "nfes": list(self.nfes), "all_rules": self.all_rules}


def _sequence(name: str, values, what: str) -> tuple:
    """``values`` as a tuple (None: empty); InputError naming the setting for a string or a non-sequence."""
    if values is None:
        return ()
    if not isinstance(values, str | bytes):
        try:
            return tuple(values)
        except TypeError:
            pass
    raise InputError(f"SweepConfig.{name} must be a sequence of {what} (empty: all), got {values!r}")


def _positive_ints(values: tuple) -> tuple[int, ...]:
    out = []
    for v in values:
        try:
            ok = not isinstance(v, bool) and int(v) == v and v >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"SweepConfig.nfes must hold integers >= 1 (e.g. (9, 35); empty: all), got {v!r}")
        out.append(int(v))
    return tuple(out)


def _read_groups(store: Store, model_id: str, config: SweepConfig) -> tuple[dict[tuple, dict[str, float]], dict]:
    """``groups[key] = {seed set: FID}`` and ``meta[key] = {label, ref}`` of the complete runs, keyed by
    (sampler, options, NFE, grid, mode, ref, samples per set, rule)."""
    recs = store.runs(config.filters(model_id), status="complete")
    recs = [r for r in recs if "nfe" in r.config]  # steps-based points: no NFE
    if config.samplers:
        recs = [r for r in recs if r.config.get("sampler") in set(config.samplers)]
    if config.nfes:
        recs = [r for r in recs if int(r.config.get("nfe")) in set(config.nfes)]
    groups: dict[tuple, dict[str, float]] = {}
    meta: dict[tuple, dict] = {}
    for rec in recs:
        cfg = rec.config
        if cfg.get("sampler_rev") != revision_fields(cfg["sampler"]).get("sampler_rev"):
            continue  # made by an older revision of this sampler
        rule = cfg["rule"]
        if not config.all_rules and rule.split(":")[0] not in CURVE_FAMILIES:
            continue
        m = rec.metrics.get("fid")
        if m is None:
            continue
        options = cfg.get("options") or {}
        n = m.n_samples
        key = (cfg["sampler"], json.dumps(options, sort_keys=True), int(cfg["nfe"]), cfg.get("grid"), cfg.get("mode"),
               cfg.get("ref"), n, rule)
        groups.setdefault(key, {}).setdefault(cfg["seeds"], m.value)  # one value per seed set (oldest run)
        meta[key] = {"label": _label(cfg, options), "ref": str(cfg.get("ref"))[:8]}
    return groups, meta


def _curve_rows(groups: dict[tuple, dict[str, float]], meta: dict) -> list[dict]:
    """One row per group: mean FID over the seed sets, its t interval, and the paired difference to ``none``."""
    labels_n: dict[str, set] = {}
    for key, mt in meta.items():
        labels_n.setdefault(mt["label"], set()).add((key[6], key[5]))

    def order(k):  # by sampler, NFE, samples, then rho; rules off the rho axis last
        rho = _rho(k[7])
        return meta[k]["label"], k[2], k[6] or 0, rho is None, rho or 0.0, k[7]

    rows = []
    nan = float("nan")
    for key in sorted(groups, key=order):
        vals = groups[key]
        label = meta[key]["label"]
        if len(labels_n[label]) > 1:
            label += f" n={key[6]} ref={meta[key]['ref']}"
        base = groups.get((*key[:7], "none"), {})
        common = [s for s in vals if s in base]
        e = t_interval(list(vals.values()))
        d = t_interval([vals[s] - base[s] for s in common]) if common else None
        rows.append({"sampler": label, "nfe": key[2], "rule": key[7], "rho": _rho(key[7]), "n_samples": key[6],
                     "seed_sets": len(vals), **estimate_columns(e),
                     **({"diff": d.mean, "diff_ci_low": d.ci_low, "diff_ci_high": d.ci_high} if d else
                        {"diff": nan, "diff_ci_low": nan, "diff_ci_high": nan})})
    return rows


def _summary(groups: dict[tuple, dict[str, float]], rows: list[dict]) -> dict:
    """Runs read, and the best rule per (sampler, NFE) next to the untouched network."""
    summary: dict = {"runs_read": sum(len(v) for v in groups.values())}
    for label, nfe in dict.fromkeys((r["sampler"], r["nfe"]) for r in rows):
        group = [r for r in rows if r["sampler"] == label and r["nfe"] == nfe]
        best = min(group, key=lambda r: (r["fid"], r["rule"] != "none"))  # ties go to the untouched network
        base = next((r for r in group if r["rule"] == "none"), None)
        summary[f"best[{label}, NFE {nfe}]"] = (f"{best['rule']} {best['fid']:.4g}"
                                                + (f" (untouched {base['fid']:.4g})" if base else ""))
    return summary


def run_sweep(net: nn.Module | None, config: SweepConfig = SweepConfig(), *, store: Store | None = None,
              progress: bool = False) -> AnalysisResult:
    """Per (sampler, NFE, rule): mean FID over the stored seed sets, its t interval and the paired
    difference to the untouched network. ``config.model_id`` (default: the checksum of ``net``) selects the
    model; ``config.features``, ``samplers`` and ``nfes`` filter further. ``progress`` is unused (nothing is
    computed)."""
    if store is None:
        raise InputError("the sweep analysis reads the sweep runs of a results store: pass store= "
                         "(on the command line: drop --no-db and give --db)")
    model_id = config.model_id
    if model_id is None:
        if net is None:
            raise InputError("give a network or a model checksum (SweepConfig.model_id)")
        model_id = state_dict_sha256(net)
    groups, meta = _read_groups(store, model_id, config)
    if not groups:
        raise InputError(f"no complete sweep runs of model {model_id[:16]} in {store.path}"
                         + (f" with features {config.features}" if config.features else "")
                         + ": run `skiptune sweep` (or `skiptune demo`) with this model and store first")
    rows = _curve_rows(groups, meta)
    notes = ["Read from the results store; every FID is the mean over the seed sets stored for that configuration "
             "(95% Student-t interval); diff = paired difference to the untouched network over common seed sets.",
             "Seed 003 Fig. 4: U-shaped curves at every NFE, the best rho rising towards 1 with the NFE."]
    return AnalysisResult(NAME, config.result_config(model_id), rows, _summary(groups, rows), notes)
