"""``skiptune reproduce`` on a latent-diffusion checkpoint: the LDM rows of Tables 7 and 10 end to end on a tiny
stand-in ``.ckpt`` (the ``ldm-imagenet256-tiny`` preset with a VQ first stage), decoded by its own first stage.

The features are the shipped digits classifier; the FIDs mean nothing against the paper's. What is checked is the
path: recognising the checkpoint, guidance with the null class, DDIM on the discrete grid, decoding, the report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import randomize
from skiptune.cli import main
from skiptune.experiment import open_store
from skiptune.nets import build_preset
from skiptune.runs.reproduce import FAMILIES, detect_family

sys.path.insert(0, str(Path(__file__).parent))
from test_ldm import write_ldm_checkpoint  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:FID from 16 samples")]
SCORING = ["--ref", "digits", "--features", "digits-classifier", "--samples", "16", "--batch", "16", "--no-progress"]


@pytest.fixture(scope="module")
def ldm_ckpt(tmp_path_factory) -> Path:
    net = randomize(build_preset("ldm-imagenet256-tiny"), seed=5, scale=0.05)
    return write_ldm_checkpoint(tmp_path_factory.mktemp("ldm") / "cin256-v2.ckpt", net)


def test_family_is_recognised_by_class_and_shape():
    import torch

    with torch.device("meta"):
        assert detect_family(build_preset("ldm-imagenet256")) == "ldm-imagenet256"
        assert detect_family(build_preset("ldm-imagenet256-tiny")) is None  # a stand-in needs --family
    fam = FAMILIES["ldm-imagenet256"]
    assert fam.needs is None and fam.latent and fam.guidance == 1.5 and fam.network == "LDMPrecond"


def test_table7_ldm_rows_end_to_end(ldm_ckpt, tmp_path):
    out = tmp_path / "t7"
    rows = "ldm-imagenet256/5-steps,ldm-imagenet256/10-steps,ldm-imagenet256/20-steps"
    with pytest.warns(UserWarning, match="not comparable"):
        code = main(["reproduce", "7", "--checkpoint", str(ldm_ckpt), "--family", "ldm-imagenet256", *SCORING,
                     "--rows", rows, "--out", str(out)])  # no --vae: the checkpoint's own first stage decodes
    assert code == 0
    text = (out / "table7.md").read_text()
    assert "| ldm-imagenet256/5-steps (interpreted) | ddim | 5 | layer:0.83:1 | 12.97 |" in text
    assert "Guidance W = 1.5" in text and "Decoder" in text and "cin256-v2.ckpt" in text
    with open_store(out / "results.sqlite") as store:
        runs = list(store.runs())
    assert len(runs) == 6  # untuned and tuned at 5, 10 and 20 steps
    cfg = runs[0].config
    assert cfg["guidance"] == 1.5 and cfg["grid"] == "discrete" and cfg["decoder"]["scale"] == 1.0
    assert {r.config["nfe"] for r in runs} == {5, 10, 20}
    assert all(r.metrics["fid"].value == r.metrics["fid"].value for r in runs)  # finite (not NaN)


def test_table10_ldm_row_and_dry_run(ldm_ckpt, tmp_path, capsys):
    out = tmp_path / "t10"
    base = ["reproduce", "10", "--checkpoint", str(ldm_ckpt), "--family", "ldm-imagenet256", *SCORING,
            "--rows", "ldm-imagenet256/10-steps/increasing"]
    with pytest.warns(UserWarning, match="not comparable"):
        assert main([*base, "--out", str(out)]) == 0
    text = (out / "table10.md").read_text()
    assert "| ldm-imagenet256/10-steps/increasing (interpreted) | ddim | 10 | ramp:up:0.95 |" in text
    capsys.readouterr()
    with pytest.warns(UserWarning, match="not comparable"):
        assert main(["reproduce", "7", "--checkpoint", str(ldm_ckpt), "--family", "ldm-imagenet256", "--dry-run",
                     "--samples", "1000", "--batch", "4"]) == 0
    plan = capsys.readouterr().out
    assert "ldm-imagenet256/sanity" in plan and str(1000 * 250 * 2) in plan  # 250 DDIM steps, guided: 2 forwards
