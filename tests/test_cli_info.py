"""``skiptune info`` through the real entry point."""

import json
import subprocess
import sys

from skiptune.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "skiptune", *args], capture_output=True, text=True, timeout=120)


def test_info_json_through_module_entry_point():
    out = run_cli("info", "--arch", "adm-tiny", "--rule", "layer:0.55", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["architecture"] == "DhariwalUNet" and len(info["sites"]) == 16
    rhos = [s["rho"] for s in info["sites"]]
    assert rhos[0] == 0.55 and rhos[-1] == 1.0
    assert [s["index"] for s in info["sites"]] == list(range(16))


def test_info_table_and_sigma_rule(capsys):
    assert main(["info", "--arch", "ddpmpp-tiny", "--rule", "ramp:down:0.5:0.002:80", "--sigma", "80"]) == 0
    text = capsys.readouterr().out
    assert "skip sites  15" in text and "0.5000" in text and "dec.4x4_block0" in text


def test_info_errors_are_clear(capsys):
    assert main(["info", "--arch", "ddpmpp-tiny", "--rule", "sites:0.5,0.5"]) == 2
    assert "15 skip sites" in capsys.readouterr().err
    assert main(["info", "--arch", "ddpmpp-tiny", "--rule", "ramp:down:0.5"]) == 2
    assert "pass --sigma" in capsys.readouterr().err
    assert main(["info", "--model", "/nonexistent/model.pkl"]) == 2
    assert "neither an existing file nor a preset" in capsys.readouterr().err
