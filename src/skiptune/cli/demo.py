"""``skiptune demo``: Skip-Tuning end to end on a small network.

Shows the paper's ImageNet-64 site table under its Heun-9 rule (seed 003, Table 2: rho 0.55 -> 1),
then attaches, measures and detaches rules on a small DDPM++ network, checking the restore.
"""

from __future__ import annotations

import torch

from skiptune.cli.info import describe


def register(sub) -> None:
    p = sub.add_parser("demo", help="run Skip-Tuning end to end on the embedded default")
    p.add_argument("--quick", action="store_true", help="smallest setting (for tests)")
    p.set_defaults(func=run)


def run(args) -> int:
    from skiptune import load_model, skip_tuning

    with torch.device("meta"):
        adm = load_model("adm-imagenet64")
    info = describe(adm, "layer:0.55")
    print("ADM ImageNet-64 (EDM), rule layer:0.55 (seed 003, Table 2, Heun 9 NFE):")
    print("  " + " ".join(f"{s['resolution']}px:{s['rho']:.2f}" for s in info["sites"]))
    torch.manual_seed(0)
    net = load_model("ddpmpp-tiny")
    x = torch.randn(4, 3, 16, 16)
    sigma = torch.tensor([0.1, 1.0, 5.0, 40.0])
    with torch.no_grad():
        base = net(x, sigma)
        print(f"\n{'rule':<28} {'max |D_tuned - D|':>18}")
        for rule in ("layer:1", "layer:0.7", "layer:1.3", "ramp:down:0.7", "window:0.5:10:layer:0.7"):
            with skip_tuning(net, rule):
                out = net(x, sigma)
            print(f"{rule:<28} {(out - base).abs().max().item():>18.3e}")
        restored = torch.equal(net(x, sigma), base)
    print(f"\noutput restored exactly after detaching: {restored}")
    return 0 if restored else 1
