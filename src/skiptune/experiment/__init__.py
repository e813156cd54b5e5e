"""The experiment layer: what a run is, how it is generated and scored, and where it is stored.

- :mod:`.specs`: :class:`ModelRef`, :class:`ScoringSpec`, :class:`DecoderRef` and :class:`Point` (model +
  sampling + rule + mode + seeds + scoring, and the decoder of a latent model), each frozen and
  self-validating with one ``to_config()``; a point's key is the identity of its stored run.
- :mod:`.generate`: :class:`SamplingSpec` and :func:`generate` (seed-by-seed sampling with a rule).
- :mod:`.reference`: :func:`load_reference` and the :class:`Scorer` (feature network + reference).
- :mod:`.scoring`: the one scoring path, :func:`score` / :func:`score_stored`.
- :mod:`.stores`: :func:`open_store`, which migrates stores written by older versions.
"""

from skiptune.experiment.generate import Generated, SamplingSpec, generate, to_uint8
from skiptune.experiment.reference import Scorer, load_reference, reference_id
from skiptune.experiment.scoring import Scored, outcome, score, score_stored
from skiptune.experiment.specs import POINT_KIND, DecoderRef, ModelRef, Point, ScoringSpec
from skiptune.experiment.stores import migrate_config, open_store

__all__ = ["POINT_KIND", "DecoderRef", "Generated", "ModelRef", "Point", "SamplingSpec", "Scored", "Scorer",
           "ScoringSpec", "generate", "load_reference", "migrate_config", "open_store", "outcome", "reference_id",
           "score", "score_stored", "to_uint8"]
