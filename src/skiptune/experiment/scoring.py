"""The one scoring path: generate the set a :class:`~skiptune.experiment.specs.Point` describes, score it, store it.

``score(net, point, scorer)`` is used by sweeps, searches, the analyses that compare rules by FID,
compare-training and the demo, so that equal points give equal numbers and share one stored run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from skiptune.core.errors import InputError
from skiptune.experiment.generate import Generated, generate, to_uint8
from skiptune.experiment.reference import Scorer
from skiptune.experiment.specs import DecoderRef, Point
from skiptune.store import Metric, RunOutcome, RunRecord, Store


@dataclass
class Scored:
    """A point's metrics, and the images and generation record behind them (None when read from a store)."""

    point: Point
    metrics: dict[str, Metric]
    images: torch.Tensor | None = None
    generated: Generated | None = None
    cached: bool = False

    @property
    def fid(self) -> float:
        return self.metrics["fid"].value


def check_decoder(net: nn.Module, point: Point, decoder: Any | None) -> None:
    """A latent model's points are scored on decoded images: the decoder must be the point's, and present."""
    latent = getattr(net, "latent_scale_factor", None) is not None
    if latent and decoder is None:
        raise InputError(f"{type(net).__name__} is a latent model: its samples are latents, and FID needs images; "
                         "pass the autoencoder it was trained with (--vae DIR)")
    if decoder is None:
        return
    if point.decoder is None or point.decoder != DecoderRef.of(decoder):
        raise InputError("the decoder given is not the point's decoder (another folder or scale); build the point "
                         "with DecoderRef.of(decoder)")


def score(net: nn.Module, point: Point, scorer: Scorer, *, device: str | torch.device = "cpu",
          progress: bool = False, decoder: Any | None = None) -> Scored:
    """Generate ``point``'s set with ``net`` and measure its FID with ``scorer`` (nothing is stored).

    A latent model's samples are decoded by ``decoder`` (a :class:`~skiptune.io.vae.LatentDecoder`, which
    ``point.decoder`` names) before scoring."""
    if scorer.spec() != point.scoring:
        raise InputError("the scorer does not measure what the point says (feature network or reference differ)")
    check_decoder(net, point, decoder)
    g = generate(net, point.seeds, point.sampling, rule=point.rule, mode=point.mode, batch_size=point.batch,
                 device=device, precision=point.precision, progress=progress, cache=point.cache)
    images = to_uint8(g.images if decoder is None else decoder.decode(g.images, batch_size=point.batch))
    fid = scorer.fid(images, batch_size=point.batch)
    metric = Metric(fid, feature_net=scorer.extractor.name, feature_checksum=scorer.extractor.weights_sha256,
                    n_samples=len(g.seeds), details={"nfe": g.nfe, **({"cache": g.cache} if g.cache else {})})
    return Scored(point, {"fid": metric}, images, g)


def outcome(scored: Scored, **timings: Any) -> RunOutcome:
    """The store record of a scored point: its metrics, the generation time, and the model's context."""
    g = scored.generated
    return RunOutcome(scored.metrics, timings={**({"generate_s": g.seconds} if g else {}), **timings},
                      context=scored.point.context())


def score_stored(net: nn.Module, point: Point, scorer: Scorer, store: Store, *, device: str | torch.device = "cpu",
                 progress: bool = False, decoder: Any | None = None) -> Scored:
    """:func:`score` through the store: read the point's run if it is complete, else compute and record it."""
    computed: list[Scored] = []

    def compute(_cfg: dict[str, Any]) -> RunOutcome:
        computed.append(score(net, point, scorer, device=device, progress=progress, decoder=decoder))
        return outcome(computed[-1], device=str(device))

    record: RunRecord = store.run_once(point.to_config(), compute)
    if computed:
        return computed[0]
    return Scored(point, dict(record.metrics), cached=True)
