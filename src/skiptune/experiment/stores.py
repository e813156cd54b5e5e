"""Opening results stores from the experiment layer: older stores are migrated to the current run identity.

Schema 1 configs differ from today's in four ways, all mapped here: generated-and-scored sets were
``kind: sweep-point`` (sweeps, searches, analyses) or ``kind: compare-training-fid`` (with the model
as a dict of sha256 and network config, and a step count instead of the NFE); rules were compared as
strings, so ``none``, ``const:1`` and ``layer:1:1`` were three runs of one point; the mode of an
untouched run was kept although it changes nothing. All are now
:class:`~skiptune.experiment.specs.Point` configs.
"""

from __future__ import annotations

import os
from typing import Any

from skiptune.adapters import MODES
from skiptune.experiment.specs import POINT_KIND
from skiptune.sampling import nfe_for_steps
from skiptune.skip import canonical_rule
from skiptune.store import Store

V1_POINT_KINDS = ("sweep-point", "compare-training-fid")


def migrate_config(config: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 config as the schema-2 config of the same run (other configs are returned unchanged)."""
    if config.get("kind") not in V1_POINT_KINDS:
        return config
    out = dict(config, kind=POINT_KIND)
    if isinstance(out.get("model"), dict):
        out["model"] = out["model"]["sha256"]
    if "steps" in out and "nfe" not in out:
        out["nfe"] = nfe_for_steps(out["sampler"], out.pop("steps"))
    rule = canonical_rule(out["rule"])
    out["rule"] = str(rule)
    if rule.is_identity and out.get("mode") in MODES:
        out["mode"] = "concat"
    return out


def open_store(path: str | os.PathLike, *, create: bool = True) -> Store:
    """The results store at ``path``; one written by an older skiptune is migrated in place first."""
    return Store(path, create=create, migrate=migrate_config)
