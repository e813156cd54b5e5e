"""``skiptune sweep`` / ``skiptune search`` / ``skiptune demo --quick`` through the real entry point."""

import csv
import subprocess
import sys

from skiptune.cli import main


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "skiptune", *args], capture_output=True, text=True, timeout=timeout)


def test_sweep_cli_writes_store_plot_and_csv_and_resumes(tmp_path):
    from skiptune import load_model, save_checkpoint

    model = save_checkpoint(load_model("ddpmpp-tiny"), tmp_path / "tiny.safetensors")  # fixed weights
    args = ["sweep", "--model", str(model), "--rules", "none;layer:0.5:0.7:0.2", "--samplers", "euler",
            "--nfe", "2", "--seeds", "0-69", "--seed-sets", "2", "--ref", "digits", "--db", str(tmp_path / "r.sqlite"),
            "--out", str(tmp_path / "out"), "--batch", "70", "--no-progress"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    rows = list(csv.DictReader(open(tmp_path / "out" / "sweep.csv")))
    assert [r["rule"] for r in rows] == ["none", "layer:0.5:1", "layer:0.7:1"]
    assert all(len(r["values"].split()) == 2 for r in rows)
    assert (tmp_path / "out" / "fid_vs_rho.png").stat().st_size > 1000
    assert (tmp_path / "out" / "grid_euler_2.png").stat().st_size > 1000  # baseline vs best, same seeds
    again = run_cli(*args)  # everything comes from the store: same numbers, nothing recomputed
    assert again.returncode == 0
    assert list(csv.DictReader(open(tmp_path / "out" / "sweep.csv"))) == rows
    listing = run_cli("runs", "--db", str(tmp_path / "r.sqlite"))
    assert listing.returncode == 0 and "layer:0.5:1" in listing.stdout


def test_search_cli_selects_on_the_mean_of_its_seed_sets_and_caches(tmp_path):
    import json
    import re
    import sqlite3

    import torch

    from skiptune import load_model, save_checkpoint

    net = load_model("ddpmpp-tiny")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # fixed non-zero weights everywhere (the zero-initialised output layers included),
        for p in net.parameters():  # so that rho changes the images
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model = save_checkpoint(net, tmp_path / "tiny.safetensors")
    db = tmp_path / "s.sqlite"
    args = ["search", "--model", str(model), "--sampler", "euler", "--nfe", "2", "--template", "const:{rho}",
            "--lo", "0.6", "--hi", "1.4", "--step", "0.2", "--coarse-step", "0.4", "--n-max", "24",
            "--seed-sets", "2", "--select-sets", "2", "--ref", "digits", "--db", str(db), "--batch", "24",
            "--no-progress"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    best = re.search(r"best rule\s+(\S+)", first.stdout).group(1)
    # the choice is the argmin, over the final rung's rules, of the FID averaged over seed sets 0 and 1 at
    # n = 24, i.e. seeds 0-23 and 24-47 (the search records its sets as sweep points)
    def stored():
        con = sqlite3.connect(db)
        rows = [(json.loads(c), v) for c, v in con.execute(
            "SELECT r.config, m.value FROM runs r JOIN metrics m ON m.run_key = r.key")]
        con.close()
        return rows

    final: dict[str, list[float]] = {}
    for c, value in stored():
        if c["seeds"] in ("0-23", "24-47") and c["rule"] != "const:1":
            final.setdefault(c["rule"], [None, None])[c["seeds"] == "24-47"] = value
    means = {rule: sum(v) / 2 for rule, v in final.items() if None not in v}
    assert len(means) >= 2 and len(set(means.values())) == len(means)  # rho matters for this network
    assert best == min(means, key=means.get)
    again = run_cli(*args)
    assert again.returncode == 0 and "; 0 newly computed" in again.stdout and f"best rule     {best}" in again.stdout
    # a sweep over the final rung's rules on the same seed sets finds every set in the store
    before = stored()
    sweep = run_cli("sweep", "--model", str(model), "--rules", ";".join(sorted(means)), "--samplers", "euler",
                    "--nfe", "2", "--seeds", "0-23", "--seed-sets", "2", "--ref", "digits", "--db", str(db),
                    "--batch", "24", "--no-progress")
    assert sweep.returncode == 0, sweep.stderr
    assert stored() == before


def test_sweep_cli_validates_before_work(tmp_path, capsys):
    assert main(["sweep", "--arch", "ddpmpp-tiny", "--samplers", "heun", "--nfe", "4", "--ref", "digits",
                 "--db", str(tmp_path / "r.sqlite")]) == 2
    assert "cannot use exactly 4 NFE" in capsys.readouterr().err
    assert main(["sweep", "--arch", "ddpmpp-tiny", "--rules", "layer:0", "--ref", "digits",
                 "--db", str(tmp_path / "r.sqlite")]) == 2
    assert "finite and > 0" in capsys.readouterr().err
    assert not (tmp_path / "r.sqlite").exists()


def test_demo_quick_end_to_end(tmp_path):
    res = run_cli("demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "real-vs-real floor" in res.stdout and "| heun | 5 |" in res.stdout
    for name in ("report.md", "fid_vs_rho.png", "grid_heun_5.png", "results.sqlite", "summary.json"):
        assert (tmp_path / "demo" / name).exists(), name
