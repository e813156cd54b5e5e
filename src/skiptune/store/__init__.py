"""Results store: every run (a generated and scored sample set, an analysis unit, a finished analysis), its
config and metrics, in SQLite. Standard library only: importing it does not import torch.

- :mod:`.keys`: canonical configs and their sha256 keys;
- :mod:`.filters`: the ``path=value`` filter language;
- :mod:`.records`: :class:`Metric`, :class:`RunRecord`, :class:`RunOutcome`;
- :mod:`.database`: :class:`Store` (crash-safe, multi-process) and :mod:`.migration` (older schemas);
- :mod:`.export`: CSV.
"""

from skiptune.core.errors import StoreError
from skiptune.store.database import SCHEMA_VERSION, STATUSES, Store
from skiptune.store.export import flatten_config, write_csv
from skiptune.store.filters import lookup, matches
from skiptune.store.keys import canonical_config, canonical_json, canonical_value, config_key
from skiptune.store.records import Metric, RunOutcome, RunRecord

__all__ = ["SCHEMA_VERSION", "STATUSES", "Metric", "RunOutcome", "RunRecord", "Store", "StoreError",
           "canonical_config", "canonical_json", "canonical_value", "config_key", "flatten_config", "lookup",
           "matches", "write_csv"]
