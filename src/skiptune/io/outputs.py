"""Outputs that are complete or absent.

A command checks its destinations with :func:`check_output_file` / :func:`check_output_folder` *before* it
computes anything (so a typo in ``--out`` costs nothing), then writes under a temporary name beside the
destination, on the same file system, and moves the result into place only when it is complete:

- :func:`atomic_file` yields a temporary path; on success it is renamed onto the destination
  (``os.replace``), on any exception (including Ctrl-C) it is removed and the destination keeps what it held;
- :func:`atomic_folder` yields a temporary folder; on success it takes the destination's place (an earlier
  output folder is moved aside and removed only after the new one is in place), on any exception it is
  removed. A folder whose destination cannot be renamed (a mount point, or the working directory) is staged
  inside it instead and its entries are moved in one by one, those named ``last`` (``config.json``) removed
  first and added last: not atomic, but a folder holding ``config.json`` is always complete.

A process killed outright (SIGKILL, power loss) can leave a hidden ``.NAME.tmp-*`` beside the destination;
the destination itself is never partial.

Errors are :class:`~skiptune.core.errors.UsageError` naming the option (``flag``) that gave the path.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from skiptune.core.errors import SkiptuneError, UsageError


def _writable(folder: Path) -> bool:
    """Whether new entries can be created in ``folder`` (read-only mounts count as not writable)."""
    return os.access(folder, os.W_OK | os.X_OK)


def _names(entries: Iterable[str], limit: int = 5) -> str:
    entries = sorted(entries)
    return ", ".join(entries[:limit]) + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def _check_can_create(target: Path, path: str, flag: str) -> None:
    """``target`` does not exist yet: its nearest existing ancestor must be a folder we may write in."""
    for folder in target.parents:
        if folder.exists() or folder.is_symlink():
            break
    else:  # pragma: no cover - the root exists
        return
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: {folder} is not a folder (it is a file), so {path} cannot be created")
    if not _writable(folder):
        raise UsageError(f"{flag} {path}: cannot write in {folder} (permission denied or read-only)")


def _is_stream(p: Path) -> bool:
    """An existing destination that is neither a regular file nor a folder (``/dev/null``, a FIFO)."""
    return p.exists() and not p.is_file() and not p.is_dir()


def check_output_file(path: str | os.PathLike, flag: str, *,
                      inputs: Mapping[str, str | os.PathLike | None] | None = None) -> Path:
    """Check, before any work, that a result file can be written to ``path``; returns the resolved destination.

    Refused: an existing folder, a read-only file, a path under a file or in a folder we may not write in,
    and one of ``inputs`` (``{"--data": path}``: the file the command reads). A missing parent folder is fine
    (it is created when the file is written). ``/dev/null`` and other non-regular files are written in place.
    """
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file name, e.g. {Path(path) / 'out'}")
    if _is_stream(p):
        if not os.access(p, os.W_OK):
            raise UsageError(f"{flag} {path}: cannot write to it (permission denied)")
        return p
    target = p.resolve()
    for other_flag, other in (inputs or {}).items():
        if other is not None and Path(other).exists() and Path(other).resolve() == target:
            raise UsageError(f"{flag} {path}: is the {other_flag} file the command reads; give another file name")
    if target.exists():
        if not os.access(target, os.W_OK):
            raise UsageError(f"{flag} {path}: the file is read-only; remove it or give another file name")
        if not _writable(target.parent):
            raise UsageError(f"{flag} {path}: cannot write in {target.parent} (permission denied or read-only)")
    else:
        _check_can_create(target, str(path), flag)
    return target


def check_writable_folder(path: str | os.PathLike, flag: str) -> Path:
    """Check, before any work, that results can be added to the folder ``path`` (which may hold earlier
    results: sweeps, analyses and the demo add to theirs): an existing folder we may write in, or one that
    can be created. Returns the folder."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a folder")
    if target.is_dir():
        if not _writable(target):
            raise UsageError(f"{flag} {path}: cannot write in this folder (permission denied or read-only)")
    else:
        _check_can_create(target, str(path), flag)
    return target


def check_output_folder(path: str | os.PathLike, flag: str, *, owned: Iterable[str], overwrite: bool = False,
                        overwrite_flag: str = "--overwrite", ignore: Iterable[str] = ()) -> Path:
    """Check, before any work, that an output folder can be written to ``path``; returns the resolved folder.

    The folder may be missing (its parent must be creatable and writable) or empty. A folder that holds
    something is refused unless ``overwrite``, and even then if it holds anything outside ``owned`` (the
    entries the command writes), which the error names. ``ignore``: entries that do not count (a staging
    folder inside the destination).
    """
    p = Path(path)
    target = p.resolve()
    owned, ignore = set(owned), set(ignore)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a folder; give a new folder name")
    if not target.exists():
        _check_can_create(target, str(path), flag)
        return target
    try:
        entries = set(os.listdir(target)) - ignore
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read the folder ({exc.strerror})") from None
    foreign = entries - owned
    if entries and not overwrite:
        raise UsageError(f"{flag} {path}: the folder is not empty (it holds {_names(entries)}); give a new folder, "
                         f"or {overwrite_flag} to replace an earlier output of this command")
    if foreign:
        raise UsageError(f"{flag} {path}: the folder holds {_names(foreign)}, which this command did not write; "
                         f"{overwrite_flag} replaces only {_names(owned, len(owned))}: move the rest away or give "
                         "a new folder")
    if not _writable(target) or (not _stays_in_place(target) and not _writable(target.parent)):
        raise UsageError(f"{flag} {path}: cannot replace the folder (permission denied or read-only)")
    return target


def _stays_in_place(target: Path) -> bool:
    """An existing folder that cannot be renamed: a mount point, or the working directory (or one above it)."""
    if not target.is_dir():
        return False
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        cwd = None
    return os.path.ismount(target) or (cwd is not None and (cwd == target or target in cwd.parents))


def _temp_name(name: str, kind: str) -> str:
    return f".{name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _write_error(flag: str, path, exc: OSError) -> UsageError:
    return UsageError(f"{flag} {path}: cannot write ({exc.strerror or exc}); nothing was changed there")


@contextmanager
def atomic_file(path: str | os.PathLike, flag: str, *,
                inputs: Mapping[str, str | os.PathLike | None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception it replaces ``path``.

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` keeps what it held; an
    ``OSError`` (disk full, ...) becomes a :class:`UsageError` naming ``flag``. The file gets the permissions
    a new file gets (umask), or those of the file it replaces.
    """
    target = check_output_file(path, flag, inputs=inputs)
    if _is_stream(target):  # /dev/null, a FIFO: nothing to replace
        yield target
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / _temp_name(target.name, "tmp")
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as for any file
        if target.exists():
            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
    except OSError as exc:
        raise _write_error(flag, path, exc) from None
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, SkiptuneError):
            raise _write_error(flag, path, exc) from None
        raise


@contextmanager
def atomic_folder(path: str | os.PathLike, flag: str, *, owned: Iterable[str], overwrite: bool = False,
                  last: Iterable[str] = ("config.json",), overwrite_flag: str = "--overwrite") -> Iterator[Path]:
    """Yield an empty temporary folder; when the block ends without an exception it becomes ``path``.

    ``path`` is checked with :func:`check_output_folder` (``owned``, ``overwrite``) when the block starts and
    again before the move; an earlier output folder is replaced as a whole, so no stale file stays. On any
    exception the temporary folder is removed and ``path`` keeps what it held; an ``OSError`` becomes a
    :class:`UsageError` naming ``flag``. Write the entries named in ``last`` at the end of the block.
    """
    owned, last = tuple(owned), tuple(last)
    target = check_output_folder(path, flag, owned=owned, overwrite=overwrite, overwrite_flag=overwrite_flag)
    in_place = _stays_in_place(target)
    try:
        if not in_place:
            target.parent.mkdir(parents=True, exist_ok=True)
        tmp = (target if in_place else target.parent) / _temp_name(target.name, "tmp")
        tmp.mkdir(0o777)  # the umask applies, as for any new folder
    except OSError as exc:
        raise _write_error(flag, path, exc) from None
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, SkiptuneError):
            raise _write_error(flag, path, exc) from None
        raise
    try:  # the outputs are complete: a change of the destination meanwhile keeps them, and says where
        check_output_folder(path, flag, owned=owned, overwrite=overwrite, overwrite_flag=overwrite_flag,
                            ignore=[tmp.name])
    except UsageError as exc:
        raise UsageError(f"{exc} (it changed while the command ran; the new outputs are complete in {tmp})"
                         ) from None
    try:
        if in_place:
            _move_entries(tmp, target, owned, last)
        else:
            _swap(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _write_error(flag, path, exc) from None
        raise


def _swap(tmp: Path, target: Path) -> None:
    """Put the complete folder ``tmp`` at ``target``, moving an existing ``target`` aside first."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = target.parent / _temp_name(target.name, "old")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _move_entries(tmp: Path, target: Path, owned: tuple[str, ...], last: tuple[str, ...]) -> None:
    """Replace ``target``'s owned entries with ``tmp``'s: the ``last`` ones are removed first and added last,
    so that ``target`` holds them only while it is complete."""
    for name in sorted(owned, key=lambda n: n not in last):
        _remove(target / name)
    for name in sorted(os.listdir(tmp), key=lambda n: n in last):
        os.rename(tmp / name, target / name)
    tmp.rmdir()
