"""``skiptune info``: architecture, parameter count and the table of skip sites with their rho."""

from __future__ import annotations

import json

from skiptune.cli import add_model_options, open_from_args
from skiptune.core.errors import InputError


def register(sub) -> None:
    p = sub.add_parser("info", help="show a network's skip sites and the rho a rule gives them",
                       description="Print the architecture, parameter count and skip sites (innermost first) "
                                   "of a model, with the rho of --rule at --sigma.")
    add_model_options(p)
    p.add_argument("--rule", default="none", help="rule to evaluate, e.g. layer:0.7 (default: none)")
    p.add_argument("--sigma", type=float, default=None, help="noise level for sigma-dependent rules")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def describe(net, rule_text: str = "none", sigma: float | None = None, network: dict | None = None) -> dict:
    """Everything ``info`` prints, as a dict."""
    from skiptune.adapters import find_adapter
    from skiptune.skip import as_rule

    rule = as_rule(rule_text)
    adapter = find_adapter(net)
    sites, stages = adapter.sites(net), adapter.stages(net)
    rule.check(len(sites))
    if rule.sigma_dependent and sigma is None:
        raise InputError(f"rule '{rule}' depends on sigma: pass --sigma")
    cfg = network or {}
    inner = getattr(net, "model", net)
    return {
        "precond": type(net).__name__,
        "architecture": type(inner).__name__,
        "config": cfg.get("kwargs") or {k: v for k, v in dict(getattr(inner, "config", {})).items()
                                         if not k.startswith("_")},
        "parameters": sum(p.numel() for p in net.parameters()),
        "rule": str(rule),
        "sigma": sigma,
        "sites": [{"index": s.index, "name": s.name, "resolution": s.resolution, "skip_channels": s.skip_channels,
                   "main_channels": s.main_channels, "stage": stage,
                   "rho": float(rule.factor(s.index, len(sites), sigma))}
                  for s, stage in zip(sites, stages, strict=True)],
    }


def run(args) -> int:
    loaded = open_from_args(args)
    info = describe(loaded.net, args.rule, args.sigma, loaded.network)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"network     {info['precond']}({info['architecture']})")
    print(f"parameters  {info['parameters']:,}")
    print(f"skip sites  {len(info['sites'])} (innermost first)")
    print(f"rule        {info['rule']}" + (f" at sigma={info['sigma']:g}" if info["sigma"] is not None else ""))
    print()
    print(f"{'index':>5}  {'site':<22} {'res':>5} {'stage':>5} {'skip ch':>8} {'main ch':>8} {'rho':>8}")
    for s in info["sites"]:
        print(f"{s['index']:>5}  {s['name']:<22} {s['resolution']:>5} {s['stage']:>5} {s['skip_channels']:>8} "
              f"{s['main_channels']:>8} {s['rho']:>8.4f}")
    return 0
