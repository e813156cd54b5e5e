"""Skip-Tuning: rules that scale encoder-to-decoder skips, and their attachment to networks."""

from skiptune.core.sigma import current_sigma, publish_sigma
from skiptune.skip.cache import CachePolicy, CacheStats, FeatureCache, canonical_cache, check_cache, feature_cache
from skiptune.skip.core import SkipTuning, skip_sites, skip_tuning
from skiptune.skip.freeu import FreeU, FreeUConfig, fourier_lowpass, freeu
from skiptune.skip.rules import (
    Constant,
    Identity,
    Layer,
    Product,
    Ramp,
    Rule,
    Sites,
    Window,
    as_rule,
    canonical_rule,
    parse_rule,
)

__all__ = [
    "CachePolicy", "CacheStats", "FeatureCache", "canonical_cache", "check_cache", "feature_cache",
    "Constant", "FreeU", "FreeUConfig", "Identity", "Layer", "Product", "Ramp", "Rule", "Sites", "SkipTuning",
    "Window", "as_rule", "canonical_rule", "current_sigma", "fourier_lowpass", "freeu", "parse_rule", "publish_sigma",
    "skip_sites", "skip_tuning",
]
