"""``skiptune reproduce``: the paper's tables end to end on stand-ins in the real checkpoint formats.

The stand-ins are tiny networks written by the tests in the public formats (an EDM network pickle, a U-ViT
state dict, a diffusers autoencoder folder); the features are the shipped digits classifier. Their FIDs
mean nothing against the paper's; what is checked is the path: rows, sanity row, guidance, decoding,
the report, and that an interrupted run resumes with nothing recomputed.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from skiptune.cli import main
from skiptune.experiment import open_store
from skiptune.nets.presets import build_network, preset_config
from skiptune.runs import sweep as sweep_module
from skiptune.runs.reproduce import FAMILIES, plan, table_rows, tables

sys.path.insert(0, str(Path(__file__).parent))
from cli_faults import assert_fails_cleanly  # noqa: E402
from edm_format import write_edm_pickle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SCORING = ["--ref", "digits", "--features", "digits-classifier", "--samples", "64", "--batch", "64", "--no-progress"]


@pytest.fixture(scope="module")
def edm_pickle(tmp_path_factory) -> Path:
    cls, kwargs = preset_config("ddpmpp-tiny")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("edm") / "network-snapshot.pkl"
    write_edm_pickle(path, build_network(cls, kwargs), kwargs)
    return path


@pytest.fixture(scope="module")
def uvit_and_vae(tmp_path_factory) -> tuple[Path, Path]:
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("uvit")
    cls, kwargs = preset_config("uvit-imagenet256-huge-tiny")
    torch.manual_seed(1)
    torch.save(build_network(cls, kwargs).state_dict(), root / "imagenet256_uvit_huge.pth")
    torch.manual_seed(2)
    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(root / "vae")
    return root / "imagenet256_uvit_huge.pth", root / "vae"


def test_list_covers_the_tables_and_says_what_each_row_needs(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for t in ("2", "3", "4", "5", "6", "7", "10"):
        assert f"Table {t}:" in out
    assert "edm-imagenet64/unipc/39" in out and "paper 2.21 -> 1.57" in out
    assert "uvit-imagenet256/50-steps" in out and "runs on imagenet256_uvit_huge.pth" in out
    assert "ldm-imagenet256/5-steps" in out and "runs on cin256-v2.ckpt" in out


def test_every_preset_row_appears_with_the_papers_numbers():
    from skiptune.skip.presets import rule_presets

    listed = {r.name for rows in tables().values() for r in rows}
    assert set(rule_presets()) <= listed
    row = next(r for r in table_rows("4") if r.name == "edm-imagenet64/heun/19")
    assert (row.paper_baseline, row.paper_tuned, row.nfe) == (3.64, 1.88, 19)
    assert row.sampling().resolved_nfe == 19 and row.sampling().resolved_end == "zero"
    unipc = next(r for r in table_rows("table6") if r.name == "edm-afhqv2-64/unipc/9")
    assert unipc.sampling().resolved_end == "sigma_min" and unipc.sampling().resolved_steps == 9
    for t, rows in tables().items():  # every table opens with the sanity row of each family that runs
        runnable = {r.family for r in rows if not r.needs}
        assert {r.family for r in rows if r.sanity} == {f for f in runnable if FAMILIES[f].sanity}, t


def test_plan_counts_samples_and_forwards():
    rows = table_rows("7")
    p = {x.row.name: x for x in plan(rows, "uvit-imagenet256", n=100, seed_sets=3)}
    tuned = p["uvit-imagenet256/50-steps"]
    assert tuned.runnable and tuned.samples == 100 * 3 * 2 and tuned.evaluations == tuned.samples * 50 * 2  # CFG
    assert not p["ldm-imagenet256/5-steps"].runnable


def _counting(monkeypatch, fail_at: int | None = None) -> list[int]:
    calls: list[int] = []
    real = sweep_module.score

    def counted(*args, **kwargs):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "score", counted)
    return calls


def test_table6_on_an_edm_pickle_end_to_end_and_resumes(edm_pickle, tmp_path, monkeypatch, capsys):
    out = tmp_path / "t6"
    argv = ["reproduce", "6", "--checkpoint", str(edm_pickle), "--family", "edm-afhqv2-64", *SCORING,
            "--rows", "edm-afhqv2-64/sanity,edm-afhqv2-64/unipc/9", "--out", str(out)]
    _counting(monkeypatch, fail_at=3)  # interrupted (Ctrl-C) while computing the third of three points
    assert main(argv) == 130 and "interrupted" in capsys.readouterr().err
    calls = _counting(monkeypatch)
    assert main(argv) == 0
    assert len(calls) == 1  # the two finished points were not recomputed
    text = (out / "table6.md").read_text()
    assert "| edm-afhqv2-64/sanity | heun | 79 | none | 1.96 |" in text
    assert "Stand-in" in text and "measured" in text
    with open(out / "table6.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    with open_store(out / "results.sqlite") as store:
        fids = sorted(r.metrics["fid"].value for r in store.runs())
    unipc = rows["edm-afhqv2-64/unipc/9"]
    measured = sorted([float(rows["edm-afhqv2-64/sanity"]["untuned_mean"]), float(unipc["untuned_mean"]),
                       float(unipc["tuned_mean"])])
    assert measured == pytest.approx(fids, rel=1e-12)  # the report shows the stored runs
    assert float(unipc["diff_mean"]) == pytest.approx(float(unipc["tuned_mean"]) - float(unipc["untuned_mean"]))
    assert (out / "table6.png").is_file()
    calls = _counting(monkeypatch)
    assert main(argv) == 0 and calls == []  # a finished table costs nothing the second time


def test_reproduce_with_a_cache_policy_stores_it_in_every_point(edm_pickle, tmp_path, capsys):
    out = tmp_path / "t6c"
    argv = ["reproduce", "6", "--checkpoint", str(edm_pickle), "--family", "edm-afhqv2-64", *SCORING,
            "--rows", "edm-afhqv2-64/unipc/9", "--no-sanity", "--out", str(out)]
    assert main([*argv, "--cache", "deepcache:3"]) == 0
    assert "Feature cache `deepcache:3` on every row" in (out / "table6.md").read_text()
    with open_store(out / "results.sqlite") as store:
        runs = store.runs()
    assert len(runs) == 2 and {r.config.get("cache") for r in runs} == {"deepcache:3"}
    assert all(r.metrics["fid"].details["cache"]["full_per_sample"] == 3 for r in runs)
    assert main([*argv, "--cache", "deepcache:3:branch=99"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_table7_on_a_uvit_state_dict_with_guidance_and_a_vae(uvit_and_vae, tmp_path, capsys):
    ckpt, vae = uvit_and_vae
    out = tmp_path / "t7"
    base = ["reproduce", "7", "--checkpoint", str(ckpt), "--arch", "uvit-imagenet256-huge-tiny", "--family",
            "uvit-imagenet256", *SCORING, "--rows", "uvit-imagenet256/sanity,uvit-imagenet256/50-steps"]
    assert_fails_cleanly([*base, "--out", str(out)], capsys, names="--vae", untouched=[tmp_path])
    assert main([*base, "--vae", str(vae), "--out", str(out)]) == 0
    text = (out / "table7.md").read_text()
    assert "Guidance W = 1.4" in text and "Decoder" in text
    with open_store(out / "results.sqlite") as store:
        runs = list(store.runs())
    assert len(runs) == 2  # the sanity row is the untuned 50-step point: computed once
    cfg = runs[0].config
    assert cfg["guidance"] == 1.4 and cfg["decoder"]["scale"] == pytest.approx(0.18215)
    assert cfg["grid"] == "discrete-time-uniform" and cfg["end"] == "sigma_min" and cfg["nfe"] == 50


def test_dry_run_prints_the_plan(edm_pickle, capsys):
    assert main(["reproduce", "4", "--checkpoint", str(edm_pickle), "--family", "edm-imagenet64", "--dry-run",
                 "--samples", "1000", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "edm-imagenet64/unipc/39" in out and "hours of network time" in out
    assert str(1000 * 2 * 39) in out  # untuned and tuned, 39 forwards each


@pytest.mark.parametrize("argv,names", [
    (["reproduce", "8", "--checkpoint", "x.pkl"], ["no table '8'", "--list"]),
    (["reproduce", "2", "--rows", "nope", "--checkpoint", "x.pkl"], ["no row nope"]),
    (["reproduce", "2", "--checkpoint", "x.pkl", "--family", "edm-cifar"], ["--family edm-cifar"]),
    (["reproduce"], ["--list"]),
])
def test_bad_requests_fail_cleanly(argv, names, capsys):
    assert_fails_cleanly(argv, capsys, names=names)


def test_an_unrecognised_checkpoint_asks_for_family(edm_pickle, capsys):
    assert_fails_cleanly(["reproduce", "6", "--checkpoint", str(edm_pickle), "--dry-run"], capsys,
                         names=["not recognised", "--family"])


def test_sample_decodes_latents_with_vae(uvit_and_vae, tmp_path, capsys):
    import numpy as np

    from skiptune.experiment import to_uint8
    from skiptune.io.vae import load_decoder

    ckpt, vae = uvit_and_vae
    common = ["sample", "--model", str(ckpt), "--arch", "uvit-imagenet256-huge-tiny", "--sampler", "dpmpp_2m",
              "--nfe", "4", "--grid", "discrete-time-uniform", "--seeds", "0-2", "--no-progress", "--no-pngs"]
    assert main([*common, "--out", str(tmp_path / "lat")]) == 0
    assert main([*common, "--vae", str(vae), "--out", str(tmp_path / "img")]) == 0
    latents = torch.from_numpy(np.load(tmp_path / "lat" / "latents.npz")["latents"])
    want = to_uint8(load_decoder(vae).decode(latents))
    got = np.load(tmp_path / "img" / "images.npz")["images"]  # NHWC
    assert got.shape == (3, 16, 16, 3) and np.array_equal(got, want.permute(0, 2, 3, 1).numpy())
    assert_fails_cleanly(["sample", "--arch", "ddpmpp-tiny", "--nfe", "3", "--seeds", "0", "--vae", str(vae),
                          "--out", str(tmp_path / "x")], capsys, names=["--vae", "not latents"])


def test_eval_decodes_latents_with_vae(uvit_and_vae, tmp_path, capsys):
    import json

    ckpt, vae = uvit_and_vae
    common = ["sample", "--model", str(ckpt), "--arch", "uvit-imagenet256-huge-tiny", "--sampler", "dpmpp_2m",
              "--nfe", "3", "--grid", "discrete-time-uniform", "--seeds", "0-19", "--no-progress", "--no-pngs"]
    assert main([*common, "--out", str(tmp_path / "lat")]) == 0
    assert main([*common, "--vae", str(vae), "--out", str(tmp_path / "img")]) == 0
    ev = ["eval", "--ref", "digits", "--features", "digits-classifier", "--no-progress"]
    assert main([*ev, "--images", str(tmp_path / "img" / "images.npz"), "--json", str(tmp_path / "a.json")]) == 0
    assert main([*ev, "--images", str(tmp_path / "lat" / "latents.npz"), "--vae", str(vae),
                 "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text())["fid"]["value"] for f in ("a.json", "b.json"))
    assert a == b  # the same uint8 images, decoded by sample or by eval
    assert_fails_cleanly([*ev, "--images", str(tmp_path / "img" / "images.npz"), "--vae", str(vae)], capsys,
                         names=["no 'latents' array", "--vae"])


def test_table3_on_a_consistency_model_state_dict(tmp_path, capsys):
    cls, kwargs = preset_config("cd-imagenet64-tiny")
    torch.manual_seed(3)
    torch.save(build_network(cls, kwargs).state_dict(), tmp_path / "cd_imagenet64_lpips.pt")
    out = tmp_path / "t3"
    assert main(["reproduce", "3", "--checkpoint", str(tmp_path / "cd_imagenet64_lpips.pt"), "--arch",
                 "cd-imagenet64-tiny", "--family", "cd-edm-imagenet64", *SCORING, "--out", str(out)]) == 0
    text = (out / "table3.md").read_text()
    assert "| cd-edm-imagenet64/onestep/1 | consistency | 1 | layer:0.91:0.96 | 6.85 |" in text
    assert "di-edm-imagenet64/onestep/1" in text and "needs a di-edm-imagenet64 checkpoint" in text
    with open_store(out / "results.sqlite") as store:
        runs = store.runs()
    assert len(runs) == 2 and {r.config["nfe"] for r in runs} == {1}  # sanity = untuned point; tuned


def test_table3_di_row_drives_an_edm_generator_at_its_initial_sigma(tmp_path, capsys):
    """Diff-Instruct's generator is an EDM network run once at sigma 5: shape-identical to EDM, so it is never
    recognised from the file and needs --family; the row is one evaluation from 5 z."""
    from conftest import randomize
    from skiptune import load_model, save_checkpoint
    from skiptune.runs.reproduce import detect_family

    net = randomize(load_model("adm-imagenet64-tiny"), seed=4)
    ckpt = save_checkpoint(net, tmp_path / "di.safetensors")
    assert detect_family(net) is None
    out = tmp_path / "t3di"
    assert main(["reproduce", "3", "--checkpoint", str(ckpt), "--family", "di-edm-imagenet64", *SCORING,
                 "--out", str(out)]) == 0
    text = (out / "table3.md").read_text()
    assert "| di-edm-imagenet64/onestep/1 (interpreted) | consistency | 1 | const:0.98 | 4.16 |" in text
    with open_store(out / "results.sqlite") as store:
        runs = store.runs()
    assert len(runs) == 2 and {(r.config["nfe"], r.config["sigma_max"]) for r in runs} == {(1, 5.0)}

