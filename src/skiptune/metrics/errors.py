"""Exceptions raised by :mod:`skiptune.metrics`.

Every error names the problem and the fix. They subclass the built-in exception a caller would
naturally catch (``ValueError`` for bad inputs, ``FileNotFoundError`` for missing weights), and all are
:class:`~skiptune.core.errors.SkiptuneError`.
"""

from __future__ import annotations

from skiptune.core.errors import InputError, MissingFileError


class MetricsError(InputError):
    """Base class of the input errors of the metrics library."""


class FeatureDimMismatchError(MetricsError):
    """Two feature sets (or a set and a reference) have different feature dimensions or extractors."""


class TooFewSamplesError(MetricsError):
    """A statistic needs more samples than it was given; the message says how many."""


class ImageFormatError(MetricsError):
    """Images of the wrong shape, dtype or value range, or containing NaN/inf."""


class MissingWeightsError(MissingFileError):
    """A feature network's weights file is not on this machine (nothing is ever downloaded)."""


class ChecksumMismatchError(MetricsError):
    """A weights file exists but its sha256 differs from the expected one."""
