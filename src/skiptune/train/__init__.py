"""Training: data sets, the EDM, DDPM and S²-DM losses, and a resumable training loop with EMA and checkpoints.

    from skiptune.train import TrainConfig, train
    result = train(TrainConfig(data="digits", steps=2000, batch=64, out="runs/digits"))
    net = skiptune.load_model(result.network)
"""

from skiptune.train.config import TrainConfig, ddpmpp_kwargs, resolve_network
from skiptune.train.data import (
    SHAPES_CLASSES,
    ImageDataset,
    digits_split_indices,
    load_dataset,
    load_digits_dataset,
    load_image_folder,
    load_npz,
    make_shapes,
)
from skiptune.train.loop import StepInfo, TrainResult, derive_seed, ema_beta, train, update_ema
from skiptune.train.loss import EDMLoss, edm_loss, edm_weight
from skiptune.train.s2dm import DiscreteLoss, alpha_skip, antithetic_timesteps, ddpm_loss, s2dm_loss

__all__ = [
    "SHAPES_CLASSES", "DiscreteLoss", "EDMLoss", "ImageDataset", "StepInfo", "TrainConfig", "TrainResult",
    "alpha_skip", "antithetic_timesteps", "ddpm_loss", "ddpmpp_kwargs", "derive_seed", "digits_split_indices",
    "edm_loss", "edm_weight", "ema_beta", "load_dataset", "load_digits_dataset", "load_image_folder", "load_npz",
    "make_shapes", "resolve_network", "s2dm_loss", "train", "update_ema",
]
