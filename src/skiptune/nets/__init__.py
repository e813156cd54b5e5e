"""Networks we own: EDM-compatible UNets and preconditioners, and named presets."""

from skiptune.nets.openai_unet import ADMPrecond, CMPrecond, OpenAIUNet
from skiptune.nets.precond import PRECOND_CLASSES, DDPMPrecond, EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond
from skiptune.nets.presets import PRESETS, build_network, build_preset, preset_config, preset_names
from skiptune.nets.unets import DhariwalUNet, SongUNet

__all__ = [
    "PRECOND_CLASSES", "PRESETS", "ADMPrecond", "CMPrecond", "DDPMPrecond", "DhariwalUNet", "EDMPrecond", "OpenAIUNet",
    "SongUNet", "VEPrecond", "VPPrecond",
    "build_network", "build_preset", "iDDPMPrecond", "preset_config", "preset_names",
]
