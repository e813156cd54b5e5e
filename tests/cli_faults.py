"""The contract of a failing command, for the tables of bad inputs and faults (tests/test_cli_faults_*.py).

A command that cannot do what it was asked exits with status 2 and prints exactly one line on stderr,
``skiptune COMMAND: error: ...``, that names what the user typed (the flag, the file) and no traceback;
and it leaves no partial output behind: the folders it was given hold what they held before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from skiptune.cli import main


def snapshot(*folders: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folders`` (missing folders count as empty)."""
    out = {}
    for folder in folders:
        if folder.exists():
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_fails_cleanly(argv: Sequence[str], capsys, *, names: str | Sequence[str] = (),
                         untouched: Sequence[Path] = ()) -> str:
    """Run ``skiptune ARGV`` in this process and check the contract; returns the error line."""
    before = snapshot(*untouched)
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"exit status {code}, stderr: {err}"
    assert len(lines) == 1 and "Traceback" not in err, f"not one line:\n{err}"
    assert lines[0].startswith(f"skiptune {argv[0]}: error: ") or lines[0].startswith("skiptune "), lines[0]
    for name in [names] if isinstance(names, str) else names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    assert snapshot(*untouched) == before, "the command changed files although it failed"
    return lines[0]
