"""Bad input files and broken results stores through the real command line: one clear line, never a traceback.

The table holds, per class of fault, the files a user can hand to ``ref``, ``eval``, ``train``, ``analyze``,
``sweep``, ``search``, ``compare-training``, ``runs``, ``report`` and ``info`` and that are not what their name
says: a non-image ``*.png`` in an image folder; a text file named ``.npz``/``.pt``/``.pth``/``.pkl``/
``.safetensors``; reference statistics with NaN, a non-symmetric covariance or a bad count; a state dict of
another network; a results store that is random bytes, a truncated or damaged copy, a text file, a directory or
read-only; and options that name nothing in the store or the data (typos in ``runs --filter/--metric/--sort``,
``--split test`` on a folder, a feature network that does not fit the reference). Each row fails with exit
status 2 and one line that names the file or flag and the problem (:func:`cli_faults.assert_fails_cleanly`),
and leaves the folder it was given as it was. Store rows also check that the store is checked before any model
or reference is loaded. The unit tests after the table cover what is a library message or a warning.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_faults import assert_fails_cleanly

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes read-only files and folders: chmod means nothing
SAMPLING = ["--rules", "none", "--samplers", "euler", "--nfe", "1", "--seeds", "0-3", "--seed-sets", "1",
            "--batch", "4", "--no-progress"]


# -- bad files -----------------------------------------------------------------------------------------------------

def png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    return path


BAD_IMAGES = {  # name -> (bytes of a file named bad.png, what the error line says)
    "text": (b"this is a text file, not an image\n", "text file"),
    "empty": (b"", "empty file"),
    "html": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", "HTML page"),
    "truncated": (None, "truncated or corrupt"),
}


def image_folder(t: Path, bad: str = "text") -> Path:
    """Three good 8x8 PNGs and one ``bad.png`` that is not what its name says."""
    folder = t / "images"
    for i in range(3):
        png(folder / f"{i}.png", i)
    content = BAD_IMAGES[bad][0]
    if content is None:  # the first 60 bytes of a real PNG: header fine, pixel data cut
        content = png(t / "whole.png", 9).read_bytes()[:60]
        (t / "whole.png").unlink()
    (folder / "bad.png").write_bytes(content)
    return folder


def text_file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a text file\nnot what its name says\n")
    return str(path)


def stats_file(path: Path, *, extractor: str = "digits-classifier", dim: int = 64, n: int = 100,
               broken: str | None = None) -> str:
    """A statistics .npz as ``skiptune ref`` writes it, made broken as asked."""
    from skiptune.metrics import FeatureStats

    feats = np.random.default_rng(0).normal(size=(n, dim))
    st = FeatureStats.from_features(feats, meta={"extractor": extractor, "feature": "features"})
    st.save(path)
    data = dict(np.load(path))
    if broken == "nan":
        data["mu"][3] = np.nan
    elif broken == "asymmetric":
        data["sigma"][0, 1] += 1.0
    elif broken == "count":
        data["n"] = np.asarray(1)
    elif broken == "shape":
        data["sigma"] = data["sigma"][:-1]
    elif broken == "meta":
        data["meta"] = np.asarray("{not json")
    if broken:
        np.savez(path, **data)
    return str(path)


def state_dict_file(path: Path, state: dict) -> str:
    torch.save(state, path)
    return str(path)


def demo_state(inner: bool = False) -> dict:
    from skiptune.io import open_model

    net = open_model("demo-digits").net
    return (net.model if inner else net).state_dict()


def uvit_state() -> dict:
    from skiptune.nets import build_preset

    return build_preset("uvit-tiny").model.state_dict()


DIFFUSERS_STATE = {"conv_in.weight": torch.zeros(32, 3, 3, 3), "conv_in.bias": torch.zeros(32),
                   "time_embedding.linear_1.weight": torch.zeros(128, 32),
                   "down_blocks.0.resnets.0.conv1.weight": torch.zeros(32, 32, 3, 3),
                   "up_blocks.0.resnets.0.conv1.weight": torch.zeros(32, 64, 3, 3)}


# -- results stores ------------------------------------------------------------------------------------------------

def good_store(path: Path, runs: int = 120) -> Path:
    from skiptune.experiment import open_store

    with open_store(path) as store:
        for i in range(runs):
            store.complete_run({"model": "m", "sampler": "heun", "nfe": 9, "rule": f"layer:{1 + i / 1000:g}",
                                "pad": "x" * 400}, {"fid": 10.0 + i})
    return path


def bad_store(t: Path, kind: str) -> str:
    """A results store path that cannot be used: ``random`` bytes, a ``truncated`` or ``damaged`` copy of a real
    store, a ``text`` file, or a ``directory``."""
    path = t / "runs" / "results.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "text":
        path.write_text("run,fid\n1,2.5\n" * 100)
    elif kind == "directory":
        path.mkdir()
    else:
        data = good_store(t / "whole.sqlite").read_bytes()
        (t / "whole.sqlite").unlink()
        if kind == "truncated":
            data = data[: len(data) // 3]
        else:  # damaged: three pages in the middle overwritten
            mid = (len(data) // 4096 // 2) * 4096
            data = data[:mid] + np.random.default_rng(1).bytes(3 * 4096) + data[mid + 3 * 4096:]
        path.write_bytes(data)
    return str(path)


def read_only_store(t: Path, monkeypatch) -> str:
    """A real store that SQLite may only read: opened with ``mode=ro`` (as a read-only file is, for a user who is
    not root; root writes any file, so a chmod would test nothing here)."""
    path = good_store(t / "runs" / "results.sqlite", runs=3)
    real = sqlite3.connect

    def connect(database, *args, **kwargs):
        if Path(database) == path:
            return real(f"file:{path}?mode=ro", *args, uri=True, **kwargs)
        return real(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    return str(path)


def chmod_read_only_store(t: Path, monkeypatch) -> str:
    path = good_store(t / "runs" / "results.sqlite", runs=3)
    path.chmod(stat.S_IRUSR)
    path.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return str(path)


STORE_COMMANDS = {  # name -> argv with the store at DB
    "runs": lambda t, db: ["runs", "--db", db],
    "report": lambda t, db: ["report", "--db", db, "--out", str(t / "report")],
    "sweep": lambda t, db: ["sweep", "--model", "demo-digits", "--ref", "digits", "--db", db, *SAMPLING],
    "search": lambda t, db: ["search", "--model", "demo-digits", "--ref", "digits", "--db", db, "--n-max", "4",
                             "--no-progress"],
    "analyze": lambda t, db: ["analyze", "norms", "--db", db, "--out", str(t / "analysis"), "--n", "4",
                              "--no-progress"],
    "compare-training": lambda t, db: ["compare-training", "demo-digits", "demo-digits", "--grid", "edm", "--steps",
                                       "2", "--samplers", "euler", "--seeds", "0-3", "--seed-sets", "1", "--db", db,
                                       "--no-progress"],
}
STORE_FAULTS = {  # kind -> what the error line says
    "random": "corrupt or not a results store",
    "truncated": "corrupt",
    "damaged": "corrupt",
    "text": "corrupt or not a results store",
    "directory": "is a directory",
}
WRITING = ("sweep", "search", "analyze", "compare-training")


def forbid_loading(monkeypatch) -> None:
    """Loading a model or a reference is a bug in a store row: the store must be checked before them."""
    def bug(*args, **kwargs):
        raise AssertionError("a model or reference was loaded before the results store was checked")

    import skiptune.analysis.context
    import skiptune.experiment.reference
    import skiptune.io

    monkeypatch.setattr(skiptune.io, "open_model", bug)
    monkeypatch.setattr(skiptune.experiment.reference, "load_reference", bug)
    monkeypatch.setattr(skiptune.analysis.context, "load_reference", bug)


# -- the table -----------------------------------------------------------------------------------------------------

def row(name: str, case, *, before_loading: bool = False, chmod: bool = False):
    """``case(t, monkeypatch) -> (argv, strings the line must hold[, strings it must not hold])``."""
    marks = []
    if chmod:
        marks.append(pytest.mark.skipif(ROOT, reason="root writes read-only files and folders; see the setpriv test"))
    return pytest.param(case, before_loading, id=name, marks=marks)


def ref_cmd(data: str, t: Path) -> list[str]:
    return ["ref", "--data", data, "--out", str(t / "out" / "ref.npz"), "--features", "digits-classifier",
            "--no-progress"]


def eval_cmd(images: str, ref: str) -> list[str]:
    return ["eval", "--images", images, "--ref", ref, "--features", "digits-classifier", "--no-progress"]


def train_cmd(data: str, t: Path) -> list[str]:
    return ["train", "--data", data, "--out", str(t / "train"), "--steps", "1", "--batch", "4", "--no-progress"]


def analyze_cmd(t: Path, *extra: str) -> list[str]:
    return ["analyze", "norms", "--n", "4", "--db", str(t / "runs" / "results.sqlite"), "--out", str(t / "analysis"),
            "--no-progress", *extra]


def sweep_cmd(t: Path, *extra: str, ref: str = "digits") -> list[str]:
    return ["sweep", "--model", "demo-digits", "--ref", ref, "--db", str(t / "runs" / "results.sqlite"), *SAMPLING,
            *extra]


NO_INCEPTION = "weights="  # a Python parameter: the flag is --weights


def no_inception_weights(t: Path, monkeypatch) -> None:
    monkeypatch.setenv("SKIPTUNE_WEIGHTS", str(t / "no-weights-here"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(t / "no-torch-home" / "hub"))


CASES = [
    # 1. a file named *.png that is not an image, in every command that reads image folders
    *[row(f"ref-folder-with-{bad}-png", lambda t, mp, bad=bad: (
        ref_cmd(str(image_folder(t, bad)), t), [str(t / "images" / "bad.png"), BAD_IMAGES[bad][1]]))
      for bad in BAD_IMAGES],
    row("eval-images-folder-with-text-png", lambda t, mp: (
        eval_cmd(str(image_folder(t)), stats_file(t / "ref.npz")), ["bad.png", "not an image file", "text file"])),
    row("train-folder-with-text-png", lambda t, mp: (
        train_cmd(str(image_folder(t)), t), ["bad.png", "not an image file"])),
    row("train-folder-with-truncated-png", lambda t, mp: (
        train_cmd(str(image_folder(t, "truncated")), t), ["bad.png", "truncated or corrupt"])),
    row("analyze-data-folder-with-text-png", lambda t, mp: (
        analyze_cmd(t, "--data", str(image_folder(t)), "--split", "train"), ["bad.png", "text file"])),
    row("sweep-ref-folder-with-empty-png", lambda t, mp: (
        sweep_cmd(t, ref=str(image_folder(t, "empty"))), ["bad.png", "empty file"])),

    # 2. text files named like binary formats, broken statistics, a state dict of another network
    row("ref-data-text-npz", lambda t, mp: (
        ref_cmd(text_file(t / "data.npz"), t), ["data.npz", "not an .npz", "text file"], ["allow_pickle"])),
    row("train-data-text-npz", lambda t, mp: (
        train_cmd(text_file(t / "data.npz"), t), ["data.npz", "text file"], ["allow_pickle"])),
    row("analyze-data-text-npz", lambda t, mp: (
        analyze_cmd(t, "--data", text_file(t / "data.npz"), "--split", "train"), ["data.npz", "text file"])),
    row("sweep-ref-text-npz", lambda t, mp: (
        sweep_cmd(t, ref=text_file(t / "ref.npz")), ["ref.npz", "text file"], ["allow_pickle"])),
    row("eval-ref-text-npz", lambda t, mp: (
        eval_cmd(str(png(t / "images" / "0.png").parent), text_file(t / "ref.npz")), ["ref.npz", "text file"])),
    row("eval-images-text-npz", lambda t, mp: (
        eval_cmd(text_file(t / "images.npz"), stats_file(t / "ref.npz")), ["images.npz", "text file"])),
    *[row(f"info-model-text-{suffix}", lambda t, mp, suffix=suffix: (
        ["info", "--model", text_file(t / f"model.{suffix}")], [f"model.{suffix}", "text file"], [": 101"]))
      for suffix in ("pt", "pth", "pkl", "safetensors")],
    row("sweep-model-text-pt-with-arch", lambda t, mp: (
        ["sweep", "--model", text_file(t / "net.pt"), "--arch", "ddpmpp-tiny", "--ref", "digits", "--db",
         str(t / "r.sqlite"), *SAMPLING], ["net.pt", "text file"])),
    *[row(f"sweep-ref-stats-{broken}", lambda t, mp, broken=broken, what=what: (
        sweep_cmd(t, ref=stats_file(t / "ref.npz", broken=broken)), ["ref.npz", what], ["mu2"]))
      for broken, what in (("nan", "NaN"), ("asymmetric", "not symmetric"), ("count", "n is 1"),
                           ("shape", "expected [d] and [d, d]"), ("meta", "not a JSON object"))],
    row("eval-ref-stats-nan", lambda t, mp: (
        eval_cmd(str(png(t / "images" / "0.png").parent), stats_file(t / "ref.npz", broken="nan")),
        ["ref.npz", "mu has 1 NaN"], ["mu2 contains"])),
    row("info-songunet-state-dict-as-uvit", lambda t, mp: (
        ["info", "--model", state_dict_file(t / "net.pt", demo_state()), "--arch", "uvit-tiny"],
        ["net.pt", "missing", "unexpected", "look like an EDM SongUNet"])),
    row("info-songunet-state-dict-as-adm", lambda t, mp: (
        ["info", "--model", state_dict_file(t / "net.pt", demo_state()), "--arch", "adm-tiny"],
        ["mis-shaped", "look like an EDM SongUNet"])),
    row("info-songunet-state-dict-without-arch", lambda t, mp: (
        ["info", "--model", state_dict_file(t / "net.pt", demo_state(inner=True))],
        ["not a U-ViT", "look like an EDM SongUNet", "--arch"])),
    row("info-uvit-state-dict-as-ddpmpp", lambda t, mp: (
        ["info", "--model", state_dict_file(t / "net.pth", uvit_state()), "--arch", "ddpmpp-tiny"],
        ["net.pth", "is not a U-ViT", "uvit-imagenet256"])),
    row("info-diffusers-state-dict-as-ddpmpp", lambda t, mp: (
        ["info", "--model", state_dict_file(t / "unet.pt", DIFFUSERS_STATE), "--arch", "ddpmpp-tiny"],
        ["unet.pt", "look like a diffusers UNet"])),

    # 3. results stores that cannot be used, in every command that opens one, checked before any loading
    *[row(f"{command}-store-{kind}", lambda t, mp, command=command, kind=kind, what=what: (
        STORE_COMMANDS[command](t, bad_store(t, kind)), ["results.sqlite", what], ["sqlite3."]),
        before_loading=True)
      for command in STORE_COMMANDS for kind, what in STORE_FAULTS.items()],
    *[row(f"{command}-store-read-only", lambda t, mp, command=command: (
        STORE_COMMANDS[command](t, read_only_store(t, mp)), ["results.sqlite", "read-only"]), before_loading=True)
      for command in WRITING],
    *[row(f"{command}-store-chmod-read-only", lambda t, mp, command=command: (
        STORE_COMMANDS[command](t, chmod_read_only_store(t, mp)), ["results.sqlite", "read-only"]),
        before_loading=True, chmod=True)
      for command in WRITING],
    row("sweep-store-under-a-file", lambda t, mp: (
        STORE_COMMANDS["sweep"](t, str(Path(text_file(t / "file")) / "results.sqlite")), ["is a file, not a folder"]),
        before_loading=True),

    # 4. options that name nothing there, and library parameters that must reach the user as flags
    row("runs-filter-unknown-field", lambda t, mp: (
        ["runs", "--db", str(good_store(t / "r.sqlite", 3)), "--filter", "samplr=heun"],
        ["--filter samplr", "sampler", "nfe"])),
    row("runs-metric-unknown", lambda t, mp: (
        ["runs", "--db", str(good_store(t / "r.sqlite", 3)), "--metric", "fdi"], ["--metric fdi", "fid"])),
    row("runs-sort-unknown", lambda t, mp: (
        ["runs", "--db", str(good_store(t / "r.sqlite", 3)), "--sort", "nfee"], ["--sort nfee", "fid", "nfe"])),
    row("analyze-folder-has-no-test-split", lambda t, mp: (
        analyze_cmd(t, "--data", str(png(t / "images" / "0.png").parent)), ["--split train", "--data"], ["split='"])),
    row("analyze-unknown-split", lambda t, mp: (analyze_cmd(t, "--split", "validation"), ["--split", "validation"])),
    row("sweep-inception-without-weights", lambda t, mp: (
        no_inception_weights(t, mp) or sweep_cmd(t, "--features", "inception-v3"), ["--weights"], [NO_INCEPTION])),
    row("compare-inception-without-weights", lambda t, mp: (
        no_inception_weights(t, mp) or ["compare-training", "demo-digits", "demo-digits", "--grid", "edm",
                                        "--steps", "2", "--samplers", "euler", "--seeds", "0-3", "--seed-sets", "1",
                                        "--db", str(t / "r.sqlite"), "--features", "inception-v3", "--no-progress"],
        ["--weights"], [NO_INCEPTION])),
    row("analyze-inception-without-weights", lambda t, mp: (
        no_inception_weights(t, mp) or ["analyze", "dsm", "--n", "4", "--no-db", "--out", str(t / "analysis"),
                                        "--features", "inception-v3", "--no-progress"], ["--weights"],
        [NO_INCEPTION])),
    row("sweep-weights-missing", lambda t, mp: (
        sweep_cmd(t, "--weights", str(t / "missing.safetensors")), ["--weights", "missing.safetensors"])),
    row("sweep-features-unlike-the-reference", lambda t, mp: (
        sweep_cmd(t, "--features", "digits-classifier",
                  ref=stats_file(t / "ref.npz", extractor="inception-v3-tf2015", dim=16)),
        ["ref.npz", "inception-v3-tf2015", "--features inception-v3"])),
]


@pytest.mark.parametrize(("case", "before_loading"), CASES)
def test_a_bad_input_fails_with_one_clear_line(case, before_loading, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, *strings = case(tmp_path, monkeypatch)
    names, absent = strings[0], strings[1] if len(strings) > 1 else []
    if before_loading:
        forbid_loading(monkeypatch)
    try:
        line = assert_fails_cleanly(argv, capsys, names=names, untouched=[tmp_path])
    finally:
        for p in tmp_path.rglob("*"):  # give chmod rows their folders back for the clean-up
            if p.is_dir():
                p.chmod(stat.S_IRWXU)
    for text in absent:
        assert text not in line, f"{text!r} in: {line}"
    assert len(line) < 1000, f"a line of {len(line)} characters: {line}"  # a summary, not a list of every key


# -- a read-only store for a user who is not root ---------------------------------------------------------------

@pytest.mark.skipif(not ROOT or shutil.which("setpriv") is None, reason="needs root and setpriv to run as nobody")
def test_a_read_only_store_as_another_user_is_one_clear_line():
    """As ``nobody``, whom permissions bind: a store in a read-only folder, a read-only store, and a new store in a
    read-only folder; each command fails with one line saying what is read-only, and nothing is written."""
    base = Path(tempfile.mkdtemp(prefix="skiptune-ro-"))
    try:
        base.chmod(0o755)
        folder = base / "ro"
        good_store(folder / "results.sqlite", runs=3)
        (folder / "file.sqlite").write_bytes((folder / "results.sqlite").read_bytes())
        os.chown(folder / "results.sqlite", 65534, 65534)  # writable by nobody, in a folder that is not
        (folder / "file.sqlite").chmod(0o444)
        folder.chmod(0o555)
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        for db, says in ((folder / "results.sqlite", f"the folder {folder} is read-only"),
                         (folder / "file.sqlite", "is read-only"), (folder / "new.sqlite", "read-only")):
            proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                                   "-m", "skiptune", "sweep", "--model", "demo-digits", "--ref", "digits", "--db",
                                   str(db), *SAMPLING], capture_output=True, text=True, timeout=300,
                                  env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stderr
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    finally:
        for p in [base, *base.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(base)


# -- library messages and warnings ---------------------------------------------------------------------------------

def test_scoring_features_default_to_what_the_reference_records(tmp_path):
    from skiptune.cli.sweep import scoring_features
    from skiptune.metrics.featureset import recorded_extractor, registered_name

    assert registered_name("inception-v3-tf2015") == "inception-v3"
    assert registered_name("inception-v3-custom") == "inception-v3"
    assert registered_name("inception-v3-tf2015-edm-pkl") == "inception-v3-edm-pkl"
    assert registered_name("clip-ViT-B-32") == "clip"
    assert registered_name("digits-classifier") == "digits-classifier"
    assert registered_name("somebody-elses-net") is None and registered_name(None) is None
    inception = stats_file(tmp_path / "inception.npz", extractor="inception-v3-tf2015", dim=8)
    assert recorded_extractor(inception) == "inception-v3"
    assert scoring_features(None, inception) == "inception-v3"  # what sweep, search and compare-training use
    assert scoring_features("digits-classifier", inception) == "digits-classifier"  # --features wins (and is checked)
    assert scoring_features(None, "digits") == "digits-classifier"
    np.savez(tmp_path / "edm.npz", mu=np.zeros(3), sigma=np.eye(3))  # EDM's references record nothing
    assert recorded_extractor(tmp_path / "edm.npz") is None
    np.savez(tmp_path / "images.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    assert recorded_extractor(tmp_path / "images.npz") is None


def test_a_reference_of_another_network_is_refused_before_sampling(tmp_path):
    from skiptune.experiment import Scorer
    from skiptune.experiment.reference import load_reference
    from skiptune.metrics import get_extractor

    ref = stats_file(tmp_path / "ref.npz", extractor="inception-v3-tf2015", dim=16)
    with pytest.raises(ValueError, match="holds 'inception-v3-tf2015' features.*--features inception-v3"):
        Scorer.load("digits-classifier", ref)
    odd = stats_file(tmp_path / "odd.npz", extractor="", dim=16)  # no record, but not the network's 64 dimensions
    with pytest.raises(ValueError, match="16-d statistics but 'digits-classifier' gives 64-d"):
        load_reference(odd, get_extractor("digits-classifier"))


def test_a_reference_without_raw_features_names_the_flag_that_keeps_them(tmp_path):
    from skiptune.metrics import FeatureStats, MetricsError

    st = FeatureStats.load(stats_file(tmp_path / "ref.npz"))
    with pytest.raises(MetricsError, match=r"skiptune ref --keep-features.*keep_features=True"):
        st.raw("KID")


def test_bf16_on_the_cpu_warns_once():
    from skiptune.io import load_model

    gen = importlib.import_module("skiptune.experiment.generate")  # the package exports a function of that name

    net = load_model("demo-digits")
    spec = gen.SamplingSpec("euler", nfe=1)
    gen._warned_cpu_autocast = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gen.generate(net, "0-1", spec, precision="fp32")
        assert not caught  # fp32: nothing to say
        gen.generate(net, "0-1", spec, precision="bf16")
        gen.generate(net, "0-1", spec, precision="fp16")
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1 and "bf16 on the CPU" in texts[0] and "--precision fp32" in texts[0], texts
