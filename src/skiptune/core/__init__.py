"""The leaf layer: what every other part of skiptune may import, and which imports none of them.

- :mod:`.errors`: the :class:`SkiptuneError` family (raised on purpose; the CLI prints them).
- :mod:`.sigma`: publication of the current noise level to the skip rules.
- :mod:`.schedules`: VP and discrete-time noise schedules.
- :mod:`.checksums`: sha256 of files, tensors and state dicts.
- :mod:`.provenance`: versions, host and git revision recorded with results.
- :mod:`.stats`: Student-t intervals, paired differences, Holm's correction.

Only :mod:`.errors`, :mod:`.provenance` and :mod:`.stats` are importable without torch; this package
imports nothing on its own.
"""
