"""One description of a run: typed, frozen, self-validating specs with one ``to_config()`` and one key.

A :class:`Point` is everything that determines a stored number: which weights (:class:`ModelRef`),
how they were sampled (:class:`~skiptune.experiment.generate.SamplingSpec`, the rule and its mode,
the seeds, batch and precision) and how the samples were scored (:class:`ScoringSpec`). Every
command that stores a generated-and-scored set (sample, sweep, search, analyses, compare-training,
demo) builds Points; its run in the results store is keyed by :meth:`Point.key`.

Canonical forms make equal points equal: the rule is compared as a :class:`~skiptune.skip.Rule`
(``none``, ``const:1``, ``layer:1:1`` are one point, spelled ``none``), and the mode of an identity
rule is irrelevant (recorded as ``concat``). What describes a run without changing its numbers (the
model file it was read from, the loader, the device) is its *context*, stored beside the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from skiptune.adapters import MODES
from skiptune.core.checksums import state_dict_sha256
from skiptune.core.errors import InputError
from skiptune.experiment.generate import PRECISIONS, SamplingSpec
from skiptune.io import LoadedModel
from skiptune.sampling import parse_seeds, sampler_fields
from skiptune.skip import Rule, canonical_cache, canonical_rule
from skiptune.store import config_key

#: the ``kind`` of a generated-and-scored point in stored configs
POINT_KIND = "point"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_sha(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise InputError(f"{what} must be a full sha256 (64 lowercase hex digits), got {value!r}")
    return value


@dataclass(frozen=True)
class ModelRef:
    """Which weights: the full sha256 of the state dict (identity) and how they were loaded (context).

    ``source`` is the path or preset name it came from, ``loader`` the format (``skiptune-safetensors``,
    ``edm-pickle``, ``preset``, ...), ``network`` the class of the loaded module; none of these are
    part of the identity: the same weights loaded two ways are the same model.
    """

    sha256: str
    source: str | None = None
    loader: str | None = None
    network: str | None = None

    def __post_init__(self):
        _check_sha(self.sha256, "a model's sha256")

    @classmethod
    def of_network(cls, net: nn.Module, source: str | None = None) -> ModelRef:
        """The reference of a network in memory (sha256 of its state dict; ``source`` as context)."""
        return cls(state_dict_sha256(net), source=source, network=type(net).__name__)

    @classmethod
    def of(cls, loaded: LoadedModel) -> ModelRef:
        """The reference of a model loaded by :func:`skiptune.io.open_model`."""
        return cls(loaded.sha256, source=loaded.source, loader=loaded.loader,
                   network=loaded.network.get("class_name") or type(loaded.net).__name__)

    def to_config(self) -> str:
        return self.sha256

    def context(self) -> dict[str, Any]:
        return {k: v for k, v in (("source", self.source), ("loader", self.loader), ("network", self.network))
                if v is not None}


@dataclass(frozen=True)
class DecoderRef:
    """The autoencoder that turns a latent model's samples into images: its folder's sha256 and the latent scale
    (the identity), and where it was loaded from (context only)."""

    sha256: str
    scale: float
    source: str | None = None

    def __post_init__(self):
        _check_sha(self.sha256, "a decoder")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not self.scale > 0:
            raise InputError(f"a decoder's latent scale must be a number > 0, got {self.scale!r}")

    @classmethod
    def of(cls, decoder: Any) -> DecoderRef:
        """The reference of a :class:`~skiptune.io.vae.LatentDecoder` (or anything with sha256, scale, source)."""
        if not getattr(decoder, "sha256", None):
            raise InputError("the decoder has no sha256 (it was not loaded from a folder); load it with "
                             "skiptune.io.vae.load_decoder")
        return cls(decoder.sha256, float(decoder.scale), getattr(decoder, "source", None))

    def to_config(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "scale": self.scale}


@dataclass(frozen=True)
class ScoringSpec:
    """How a generated set is scored: the feature network (name and weights sha256) and the reference
    statistics (:func:`~skiptune.experiment.reference.reference_id` and sample count)."""

    features: str
    features_sha256: str
    ref: str
    ref_n: int | None  # None: the file records no count (EDM's fid-refs); its id names it by its mean and covariance

    def __post_init__(self):
        if not self.features or not isinstance(self.features, str):
            raise InputError(f"the feature network needs a name, got {self.features!r}")
        if self.ref_n is not None and (not isinstance(self.ref_n, int) or self.ref_n < 2):
            raise InputError(f"a reference needs at least 2 samples, got ref_n={self.ref_n!r}")
        _check_sha(self.ref, "a reference id")

    def to_config(self) -> dict[str, Any]:
        return {"features": self.features, "features_sha256": self.features_sha256, "ref": self.ref,
                "ref_n": self.ref_n}


@dataclass(frozen=True)
class Point:
    """One generated set of one model, scored: the unit of every stored FID.

    ``rule`` is kept in canonical form (:func:`~skiptune.skip.canonical_rule`); ``seeds`` in the
    seed syntax (``0-99`` or ``0,5,7``). ``batch`` is part of the identity because float round-off
    may depend on it; ``precision`` is the network's (``fp32`` unless mixed precision).
    """

    model: ModelRef
    sampling: SamplingSpec
    rule: Rule
    seeds: str
    scoring: ScoringSpec
    mode: str = "concat"
    batch: int = 250
    precision: str = "fp32"
    decoder: DecoderRef | None = None  # latent models: the autoencoder that decodes the samples
    cache: str | None = None  # feature-cache policy (skiptune.skip.cache), canonical; None: every pass is full

    def __post_init__(self):
        object.__setattr__(self, "cache", canonical_cache(self.cache))
        if self.decoder is not None and not isinstance(self.decoder, DecoderRef):
            raise InputError(f"a point's decoder must be a DecoderRef, got {type(self.decoder).__name__}")
        for name, cls in (("model", ModelRef), ("sampling", SamplingSpec), ("scoring", ScoringSpec)):
            if not isinstance(getattr(self, name), cls):
                raise InputError(f"a point's {name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        rule = canonical_rule(self.rule)
        object.__setattr__(self, "rule", rule)
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if rule.is_identity:
            object.__setattr__(self, "mode", "concat")  # no rho acts anywhere: every mode is the same point
        if not isinstance(self.seeds, str):
            raise InputError(f"seeds must be given as text such as '0-99', got {self.seeds!r}")
        if not parse_seeds(self.seeds):  # refuses repeated seeds and absurd ranges, naming them
            raise InputError("a point needs at least one seed")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise InputError(f"batch must be a positive integer, got {self.batch!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def n_samples(self) -> int:
        return len(parse_seeds(self.seeds))

    def with_rule(self, rule: Rule | str) -> Point:
        return replace(self, rule=canonical_rule(rule))

    def with_seeds(self, seeds: str) -> Point:
        return replace(self, seeds=seeds)

    def to_config(self) -> dict[str, Any]:
        """The stored identity: every field that determines the numbers, in canonical form."""
        s = self.sampling
        cfg: dict[str, Any] = {"kind": POINT_KIND, "model": self.model.to_config(), **self.scoring.to_config(),
                               "grid": s.grid, "mode": self.mode, "batch": self.batch,
                               **sampler_fields(s.sampler, s.resolved_end),
                               "rule": str(self.rule), "seeds": self.seeds, "options": dict(s.options)}
        # a step count is stored as the NFE it gives (one-to-one for a given end of the grid), so `--steps 3`
        # and `--nfe 5` of Heun are one point; grids ending at 0 keep the keys they always had
        cfg["nfe"] = s.resolved_nfe
        if s.guidance is not None:
            cfg["guidance"] = s.guidance
        if self.decoder is not None:
            cfg["decoder"] = self.decoder.to_config()
        if s.sigma_min is not None:
            cfg["sigma_min"] = s.sigma_min
        if s.sigma_max is not None:
            cfg["sigma_max"] = s.sigma_max
        if self.precision != "fp32":  # float32 runs keep the keys they always had
            cfg["precision"] = self.precision
        if self.cache is not None:  # uncached runs keep the keys they always had
            cfg["cache"] = self.cache
        return cfg

    def key(self) -> str:
        return config_key(self.to_config())

    def context(self) -> dict[str, Any]:
        out = {"model": self.model.context()}
        if self.decoder is not None and self.decoder.source:
            out["decoder"] = {"source": self.decoder.source}
        return out
