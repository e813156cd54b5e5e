"""Outputs complete or absent, destinations checked before any work, seeds given once, and a closed pipe.

The table holds bad destinations and seed lists of ``sample``, ``ref`` and ``eval``: each fails with one line
naming the flag, before the command computes anything (the ``no_work`` fixture turns every computation into a
bug), and leaves the folders as they were. The tests after it cover the behaviours: an earlier output replaced
as a whole with ``--overwrite``, ``config.json`` written last, an interrupted or failed write that leaves the
destination as it was and no temporary folder behind, atomic result files, and ``| head -1``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import skiptune.io.outputs as outputs
from cli_faults import assert_fails_cleanly, snapshot
from skiptune.cli import main

FAST = ["--model", "demo-digits", "--sampler", "euler", "--nfe", "1", "--batch", "4", "--no-progress"]
OUTPUTS = ["config.json", "grid.png", "images", "images.npz"]
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes in read-only folders: chmod tests mean nothing


def sample(out, seeds: str = "0-3", *extra: str) -> list[str]:
    return ["sample", *FAST, "--seeds", seeds, "--out", str(out), *extra]


def earlier_output(folder: Path, seeds: str = "0-7") -> Path:
    assert main(sample(folder, seeds)) == 0
    assert sorted(os.listdir(folder)) == OUTPUTS
    return folder


def images_npz(path: Path) -> str:
    np.savez(path, images=np.zeros((4, 8, 8, 3), np.uint8))
    return str(path)


def a_file(path: Path, text: str = "not mine\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def a_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_only(monkeypatch, folder: Path) -> Path:
    """``folder`` as a read-only folder looks to the checks (a chmod means nothing to root, who runs CI here)."""
    folder.mkdir(parents=True, exist_ok=True)
    real = outputs._writable
    monkeypatch.setattr(outputs, "_writable", lambda f: Path(f).resolve() != folder.resolve() and real(f))
    return folder


def chmod_read_only(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return folder


def forbid_work(monkeypatch) -> None:
    """Sampling, reference statistics and evaluation all fail as bugs: a row must be refused before them."""
    def bug(*args, **kwargs):
        raise AssertionError("the command computed before it checked its destination")

    import importlib

    import skiptune.metrics

    monkeypatch.setattr(importlib.import_module("skiptune.experiment.generate"), "generate", bug)
    monkeypatch.setattr(skiptune.metrics, "compute_reference", bug)
    monkeypatch.setattr(skiptune.metrics, "evaluate", bug)


def row(name: str, case, *, chmod: bool = False):
    """``case(tmp, monkeypatch) -> (argv, strings the error line must hold)``; ``chmod`` rows need a non-root user."""
    marks = [pytest.mark.skipif(ROOT, reason="root may write in read-only folders")] if chmod else []
    return pytest.param(case, id=name, marks=marks)


def ref(t: Path, out) -> list[str]:
    return ["ref", "--data", images_npz(t / "a.npz"), "--out", str(out), "--no-progress"]


def evaluate(t: Path, out, images: str = "a.npz", reference: str = "a.npz") -> list[str]:
    images_npz(t / images), images_npz(t / reference)
    return ["eval", "--images", str(t / images), "--ref", str(t / reference), "--json", str(out), "--no-progress"]


CASES = [
    # -- sample --out: what is there, where it goes
    row("sample-out-is-a-file", lambda t, m: (sample(a_file(t / "taken")), ["--out", "is a file"])),
    row("sample-out-under-a-file", lambda t, m: (sample(a_file(t / "taken") / "run"), ["--out", "not a folder"])),
    row("sample-out-in-read-only-folder",
        lambda t, m: (sample(read_only(m, t / "ro") / "run"), ["--out", "cannot write"])),
    row("sample-out-in-chmod-read-only-folder",
        lambda t, m: (sample(chmod_read_only(t / "ro") / "run"), ["--out", "cannot write"]), chmod=True),
    row("sample-out-not-empty",
        lambda t, m: (sample(a_file(t / "run" / "notes.txt").parent), ["--out", "not empty", "notes.txt",
                                                                        "--overwrite"])),
    row("sample-out-holds-an-earlier-output",
        lambda t, m: (sample(earlier_output(t / "run")), ["--out", "not empty", "--overwrite"])),
    row("sample-overwrite-of-a-folder-with-other-files",
        lambda t, m: (sample(a_file(earlier_output(t / "run") / "notes.txt").parent, "0-3", "--overwrite"),
                      ["--out", "notes.txt", "did not write"])),
    row("sample-overwrite-of-a-foreign-folder",
        lambda t, m: (sample(a_file(t / "data" / "cat.jpg").parent, "0-3", "--overwrite"), ["--out", "cat.jpg"])),
    row("sample-overwrite-in-read-only-folder",
        lambda t, m: (sample(read_only(m, earlier_output(t / "run")), "0-3", "--overwrite"),
                      ["--out", "cannot replace"])),
    # -- sample --seeds: repeated, too many, out of range, not numbers
    row("seeds-overlapping-ranges", lambda t, m: (sample(t / "run", "0-3,2-5"), ["--seeds", "repeats", "2-3"])),
    row("seeds-a-seed-twice", lambda t, m: (sample(t / "run", "7,0-9"), ["--seeds", "repeats", "(7)"])),
    row("seeds-too-many", lambda t, m: (sample(t / "run", "0-99999999999"), ["--seeds", "10000000"])),
    row("seeds-above-2^63", lambda t, m: (sample(t / "run", "0-9223372036854775808"), ["--seeds", "2^63"])),
    row("seeds-not-a-range", lambda t, m: (sample(t / "run", "1-2-3"), ["--seeds", "'1-2-3'"])),
    row("seeds-not-numbers", lambda t, m: (sample(t / "run", "0-x"), ["--seeds", "'0-x'"])),
    # -- ref --out: a file is expected
    row("ref-out-is-a-folder", lambda t, m: (ref(t, a_folder(t / "d")), ["--out", "is a folder"])),
    row("ref-out-under-a-file", lambda t, m: (ref(t, a_file(t / "taken") / "ref.npz"), ["--out", "not a folder"])),
    row("ref-out-in-read-only-folder",
        lambda t, m: (ref(t, read_only(m, t / "ro") / "ref.npz"), ["--out", "cannot write"])),
    row("ref-out-in-chmod-read-only-folder",
        lambda t, m: (ref(t, chmod_read_only(t / "ro") / "sub" / "ref.npz"), ["--out", "cannot write"]), chmod=True),
    row("ref-out-is-the-data", lambda t, m: (ref(t, t / "a.npz"), ["--out", "--data"])),
    # -- eval --json: a file is expected
    row("eval-json-is-a-folder", lambda t, m: (evaluate(t, a_folder(t / "d")), ["--json", "is a folder"])),
    row("eval-json-under-a-file",
        lambda t, m: (evaluate(t, a_file(t / "taken") / "m.json"), ["--json", "not a folder"])),
    row("eval-json-in-read-only-folder",
        lambda t, m: (evaluate(t, read_only(m, t / "ro") / "m.json"), ["--json", "cannot write"])),
    row("eval-json-in-chmod-read-only-folder",
        lambda t, m: (evaluate(t, chmod_read_only(t / "ro") / "m.json"), ["--json", "cannot write"]), chmod=True),
    row("eval-json-is-the-images",
        lambda t, m: (evaluate(t, t / "a.npz", reference="b.npz"), ["--json", "is the --images"])),
    row("eval-json-is-the-ref", lambda t, m: (evaluate(t, t / "b.npz", reference="b.npz"), ["--json", "is the --ref"])),
]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_destination_or_seed_list_fails_before_any_work(case, tmp_path, monkeypatch, capsys):
    argv, names = case(tmp_path, monkeypatch)  # may sample an earlier output: before work is forbidden
    forbid_work(monkeypatch)
    before = sorted(os.listdir(tmp_path))
    try:
        assert_fails_cleanly(argv, capsys, names=names, untouched=[tmp_path])
        assert sorted(os.listdir(tmp_path)) == before, "a folder or temporary file was left behind"
    finally:
        for p in tmp_path.rglob("*"):  # let pytest remove the chmod-ed folders
            if p.is_dir():
                p.chmod(stat.S_IRWXU)


# -- sample: the output folder is replaced as a whole, or not at all ------------------------------------------------

def test_overwrite_replaces_the_earlier_output_as_a_whole(tmp_path, capsys):
    """Seeds 100-101 over an output of seeds 0-7: two PNGs (not ten), and eval of images/ would see two."""
    out = earlier_output(tmp_path / "run")
    assert main(sample(out, "100-101", "--overwrite")) == 0
    assert sorted(os.listdir(out)) == OUTPUTS
    assert sorted(os.listdir(out / "images")) == ["000100.png", "000101.png"]
    assert np.load(out / "images.npz")["seeds"].tolist() == [100, 101]
    assert json.loads((out / "config.json").read_text())["config"]["seeds"] == "100-101"
    assert os.listdir(tmp_path) == ["run"], "a temporary folder was left behind"
    # --no-pngs over an output with PNGs: no stale images/ stays either
    assert main(sample(out, "3", "--overwrite", "--no-pngs")) == 0
    assert sorted(os.listdir(out)) == ["config.json", "grid.png", "images.npz"]


def test_a_new_folder_with_new_parents_and_an_empty_folder_are_written(tmp_path):
    assert main(sample(tmp_path / "a" / "b" / "run", "0-1")) == 0
    assert sorted(os.listdir(tmp_path / "a" / "b" / "run")) == OUTPUTS
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a" / "b" / "run").stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    empty = a_folder(tmp_path / "empty")
    assert main(sample(empty, "0-1")) == 0
    assert sorted(os.listdir(empty)) == OUTPUTS
    assert sorted(os.listdir(tmp_path)) == ["a", "empty"]


def test_config_json_is_written_last_into_a_temporary_folder_beside_the_output(tmp_path, monkeypatch):
    import skiptune.core.provenance as provenance

    out, seen = tmp_path / "run", []
    real = provenance.write_run_json

    def spy(path, config):
        path = Path(path)
        seen.append((path.parent.parent, sorted(os.listdir(path.parent)), out.exists()))
        return real(path, config)

    monkeypatch.setattr(provenance, "write_run_json", spy)
    assert main(sample(out, "0-1")) == 0
    (parent, present, out_existed), = seen
    assert parent == tmp_path  # beside --out: the same file system, so the final move is a rename
    assert present == ["grid.png", "images", "images.npz"] and not out_existed


@pytest.mark.parametrize("fault", ["ctrl-c", "disk-full"])
@pytest.mark.parametrize("dest", ["new", "earlier-output"])
def test_an_interrupted_write_leaves_the_folder_as_it_was(fault, dest, tmp_path, monkeypatch, capsys):
    import skiptune.io.images as images

    out = tmp_path / "run"
    extra = []
    if dest == "earlier-output":
        earlier_output(out)
        extra = ["--overwrite"]
    before, entries = snapshot(tmp_path), sorted(os.listdir(tmp_path))
    real, calls = images.save_png, []

    def failing_png(img, path):
        calls.append(path)
        if len(calls) == 3:  # grid.png, 000000.png, then the third write fails
            if fault == "ctrl-c":
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(img, path)

    monkeypatch.setattr(images, "save_png", failing_png)
    if fault == "ctrl-c":
        capsys.readouterr()
        assert main(sample(out, "0-3", *extra)) == 130
        assert "interrupted" in capsys.readouterr().err
    else:
        assert_fails_cleanly(sample(out, "0-3", *extra), capsys, names=["--out", "No space left"])
    assert len(calls) == 3
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == entries, "partial output left behind"


def test_a_failed_move_into_place_puts_the_earlier_output_back(tmp_path, monkeypatch, capsys):
    out = earlier_output(tmp_path / "run")
    before = snapshot(tmp_path)
    real = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(dst) == out and ".tmp-" in Path(src).name:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    assert_fails_cleanly(sample(out, "100-101", "--overwrite"), capsys, names=["--out"])
    assert snapshot(tmp_path) == before and os.listdir(tmp_path) == ["run"]


def test_the_working_directory_as_output_is_replaced_in_place(tmp_path, monkeypatch):
    """The working directory cannot be renamed away: the new entries are moved into it, config.json last."""
    out = earlier_output(tmp_path / "run")
    monkeypatch.chdir(out)
    assert main(sample(".", "5", "--overwrite")) == 0
    assert sorted(os.listdir(out)) == OUTPUTS and os.listdir(out / "images") == ["000005.png"]
    assert Path.cwd() == out.resolve() and os.listdir(tmp_path) == ["run"]


def test_two_processes_check_before_work_and_only_rank_0_writes(tmp_path, monkeypatch):
    """Under torchrun every rank checks --out first; a rank other than 0 returns without writing."""
    import skiptune.distributed as distributed

    monkeypatch.setattr(distributed, "init_distributed", lambda device: distributed.Dist(rank=1, world_size=2))
    monkeypatch.setattr(distributed, "gather_generated", lambda part, d: None)
    assert main(sample(tmp_path / "run", "0-7")) == 0
    assert os.listdir(tmp_path) == []


# -- ref and eval: one result file, replaced atomically ---------------------------------------------------------------

def test_an_interrupted_ref_keeps_the_earlier_reference(tmp_path, monkeypatch, capsys):
    import skiptune.metrics

    ref = a_file(tmp_path / "ref.npz", "the earlier reference")

    class HalfWritten:
        def save(self, path):
            Path(path).write_text("trunc")  # a write that stops midway
            raise KeyboardInterrupt

    def compute_reference(data, out=None, **kwargs):
        fs = HalfWritten()
        if out is not None:
            fs.save(out)
        return fs

    monkeypatch.setattr(skiptune.metrics, "compute_reference", compute_reference)
    capsys.readouterr()
    assert main(["ref", "--data", images_npz(tmp_path / "a.npz"), "--out", str(ref), "--features",
                 "digits-classifier", "--no-progress"]) == 130
    assert ref.read_text() == "the earlier reference"
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "ref.npz"]


def test_eval_json_that_cannot_be_written_keeps_the_earlier_file(tmp_path, monkeypatch, capsys):
    import skiptune.metrics

    class DiskFull:
        def __str__(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    results = {"fid": {"value": 1.0, "n": 4, "n_ref": 4, "extractor": "x", "weights": DiskFull()}}
    monkeypatch.setattr(skiptune.metrics, "evaluate", lambda *args, **kwargs: results)
    old = a_file(tmp_path / "m.json", '{"earlier": true}\n')
    imgs = images_npz(tmp_path / "a.npz")
    assert_fails_cleanly(["eval", "--images", imgs, "--ref", imgs, "--json", str(old), "--no-progress"], capsys,
                         names=["--json", "No space left"], untouched=[tmp_path])
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "m.json"]


@pytest.fixture
def pixel_extractor():
    from skiptune.metrics import FeatureExtractor, register_extractor, unregister_extractor

    def fn(x, wanted):
        import torch
        return {"f": torch.nn.functional.avg_pool2d(x.float() / 255.0, x.shape[-1] // 2).flatten(1)}

    register_extractor("test-pixels-out", lambda: FeatureExtractor("test-pixels-out", fn, {"f": 12}), overwrite=True)
    yield "test-pixels-out"
    unregister_extractor("test-pixels-out")


def test_ref_and_eval_replace_their_files_and_write_to_dev_null(tmp_path, pixel_extractor):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", images=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
    common = ["--features", pixel_extractor, "--no-progress"]
    ref, js = a_file(tmp_path / "out" / "ref.npz", "old"), a_file(tmp_path / "out" / "m.json", "old")
    ref.chmod(0o640)
    assert main(["ref", "--data", str(tmp_path / "a.npz"), "--out", str(ref), *common]) == 0
    assert np.load(ref)["mu"].shape == (12,) and stat.S_IMODE(ref.stat().st_mode) == 0o640
    assert main(["eval", "--images", str(tmp_path / "a.npz"), "--ref", str(ref), "--json", str(js), *common]) == 0
    assert json.loads(js.read_text())["fid"]["n"] == 40
    assert sorted(os.listdir(tmp_path / "out")) == ["m.json", "ref.npz"]
    # a new file in new folders, and /dev/null (written in place: never replaced by a regular file)
    assert main(["eval", "--images", str(tmp_path / "a.npz"), "--ref", str(ref), "--json",
                 str(tmp_path / "x" / "y" / "m.json"), *common]) == 0
    assert json.loads((tmp_path / "x" / "y" / "m.json").read_text())["fid"]["n"] == 40
    if Path(os.devnull).exists() and not Path(os.devnull).is_file():
        assert main(["eval", "--images", str(tmp_path / "a.npz"), "--ref", str(ref), "--json", os.devnull,
                     *common]) == 0
        assert stat.S_ISCHR(Path(os.devnull).stat().st_mode)


# -- outputs piped into a command that closes early -----------------------------------------------------------------

@pytest.mark.parametrize("argv", [["info", "--model", "demo-digits", "--json"], ["runs", "--db", "STORE"],
                                  ["runs", "--db", "STORE", "--json"]], ids=["info", "runs", "runs-json"])
def test_a_closed_pipe_ends_the_command_quietly(argv, tmp_path):
    """``skiptune ... | head -1``: the reader is gone before the command writes; exit 141, nothing on stderr."""
    from skiptune.experiment import open_store

    open_store(tmp_path / "r.sqlite").close()
    argv = [str(tmp_path / "r.sqlite") if a == "STORE" else a for a in argv]
    proc = subprocess.Popen([sys.executable, "-m", "skiptune", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # like head -1 that has exited: no reader is left
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


def test_a_broken_pipe_in_process_returns_141_without_a_traceback(monkeypatch, capsys):
    import skiptune.cli.info as info

    def write_to_closed_pipe(args):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(info, "run", write_to_closed_pipe)
    assert main(["info", "--arch", "ddpmpp-tiny"]) == 141
    assert capsys.readouterr().err == ""
