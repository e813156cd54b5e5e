"""The one family of errors that skiptune raises on purpose.

Every :class:`SkiptuneError` carries a message that names the problem and the fix; the command line
prints that message and exits with status 2. Anything else that escapes is a bug and shows its
traceback. Each class also subclasses the built-in exception a caller would naturally catch
(``ValueError`` for bad input, ``FileNotFoundError`` for a missing file, ...), so code written
against the built-ins keeps working.
"""

from __future__ import annotations

import pickle


class SkiptuneError(Exception):
    """Base class: raised on purpose, with a message a user can act on."""


class InputError(SkiptuneError, ValueError):
    """An argument, option, rule, config value or data file is invalid."""


class UsageError(InputError):
    """A command-line option is invalid or missing."""


class MissingFileError(SkiptuneError, FileNotFoundError):
    """A file the user named (or a weights file skiptune needs) is not there; nothing is downloaded."""


class StoreError(SkiptuneError, RuntimeError):
    """A results store cannot be used as asked (unknown run, newer schema, not a store, ...)."""


class CheckpointError(InputError):
    """A checkpoint is corrupt, foreign, or does not fit the network it is loaded into."""


class UnsafePickleError(SkiptuneError, pickle.UnpicklingError):
    """A pickle asks for a global outside the allow-list; nothing from it was executed."""



class UnknownNameError(InputError, KeyError):
    """A name (feature network, preset, analysis, ...) that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StateError(SkiptuneError, RuntimeError):
    """An operation that the current state does not allow (a second rule attached to one network, ...)."""
