"""Errors through the real command line: one line naming the flag, exit status 2, no traceback; bugs keep theirs."""

from __future__ import annotations

import pytest

from skiptune.cli import main


@pytest.mark.parametrize("argv", [
    ["analyze", "norms", "--device", "cuda:7", "--no-db"],
    ["demo", "--device", "gpu"],
    ["sweep", "--model", "demo-digits", "--ref", "digits", "--device", "nonsense"],
    ["train", "--data", "digits", "--out", "x", "--steps", "1", "--device", "cuda"],
])
def test_an_unusable_device_is_one_line_naming_the_flag(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_debug_shows_the_traceback_of_an_error_raised_on_purpose(capsys, tmp_path):
    assert main(["--debug", "runs", "--db", str(tmp_path / "missing.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "no results store" in err.splitlines()[-1]


def test_a_bug_is_not_reported_as_a_usage_error(monkeypatch, tmp_path):
    import skiptune.cli.runs as runs_cli
    from skiptune.experiment import open_store

    def broken(*args, **kwargs):
        raise ValueError("an internal inconsistency")  # not a SkiptuneError: a bug

    open_store(tmp_path / "r.sqlite").close()
    monkeypatch.setattr(runs_cli, "select", broken)
    with pytest.raises(ValueError, match="internal inconsistency"):
        main(["runs", "--db", str(tmp_path / "r.sqlite")])
