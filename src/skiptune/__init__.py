"""skiptune: training-free Skip-Tuning of diffusion UNets (Ma et al., "The Surprising Effectiveness of
Skip-Tuning in Diffusion Sampling").

    import skiptune
    net = skiptune.load_model("model.safetensors")     # or an EDM .pkl, or a preset name
    with skiptune.skip_tuning(net, "layer:0.7"):        # rho 0.7 innermost -> 1.0 outermost
        x0 = net(x, sigma)
"""

from skiptune.io import load_model, save_checkpoint
from skiptune.skip import parse_rule, skip_sites, skip_tuning

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "parse_rule", "save_checkpoint", "skip_sites", "skip_tuning"]
