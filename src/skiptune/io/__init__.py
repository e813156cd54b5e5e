"""Checkpoints: our safetensors format, safe EDM pickle loading, and :func:`open_model` / :func:`load_model`."""

from skiptune.io.checkpoint import (
    LoadedModel,
    load_checkpoint,
    load_model,
    network_config,
    open_model,
    save_checkpoint,
)
from skiptune.io.edm_pickle import CheckpointError, UnsafePickleError, load_edm_pickle

__all__ = ["CheckpointError", "LoadedModel", "UnsafePickleError", "load_checkpoint", "load_edm_pickle", "load_model",
           "network_config", "open_model", "save_checkpoint"]
