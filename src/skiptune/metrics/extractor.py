"""Feature networks behind one interface, and a registry of them by name.

A :class:`FeatureExtractor` turns images into named feature arrays, e.g. ``{'pool': [N, 2048],
'logits_unbiased': [N, 1008]}``, and carries what must be recorded with every number computed from
them: its name, feature dimensions, preprocessing/resize policy and weights checksum (DESIGN.md,
"record which extractor, weights checksum, resize mode and sample count produced a number").

Extractors consume the canonical image form of :mod:`skiptune.metrics.images` (uint8 NCHW RGB);
``__call__`` also accepts float images with a ``value_range`` and converts them the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from skiptune.core.checksums import file_sha256, state_dict_sha256  # noqa: F401 - part of this module's interface
from skiptune.core.errors import InputError, UnknownNameError

from .errors import ChecksumMismatchError, FeatureDimMismatchError, MetricsError
from .images import ImageArray, to_uint8_nchw

FeatureFn = Callable[[torch.Tensor, Sequence[str]], Mapping[str, torch.Tensor]]
#: the value of ``expected_sha256`` that accepts a weights file whatever its checksum (None does too)
ANY_SHA256 = "any"


def normalize_sha256(expected: str | None) -> str | None:
    """``expected_sha256`` of an extractor factory: 64 hex digits (lower-cased), or None for ``None``/``'any'``."""
    if expected is None:
        return None
    text = str(expected).strip().lower()
    if text == ANY_SHA256:
        return None
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise InputError(f"expected_sha256 must be 64 hexadecimal digits or 'any', got {expected!r}")
    return text


def check_weights_sha256(path: object, sha256: str, expected: str | None, hint: str = "") -> None:
    """Raise :class:`ChecksumMismatchError` if ``expected`` (see :func:`normalize_sha256`) is a checksum
    that ``sha256``, the weights file's own, is not."""
    want = normalize_sha256(expected)
    if want is not None and sha256 != want:
        raise ChecksumMismatchError(
            f"{path} has sha256 {sha256}, expected {want}{hint}. The file is damaged or different weights; "
            "fetch it again, or accept it as it is with expected_sha256=None or 'any' (command line: "
            "--weights-sha256 any, or --weights-sha256 with its own sha256); its own sha256 is then recorded"
        )


@dataclass(eq=False)
class FeatureExtractor:
    """A feature network with its provenance.

    Attributes:
        name: registry name, recorded with results (e.g. ``'inception-v3-tf2015'``).
        fn: ``fn(images_uint8_nchw_on_device, wanted_feature_names) -> {name: tensor [N, ...]}``.
        dims: feature name -> dimension; ``None`` entries or a ``None`` dict are filled on first use.
        preprocessing: the resize and normalisation policy, in words (recorded as ``resize``).
        weights_sha256: checksum of the weights (file sha256, or ``'state_dict:<sha256>'``).
        metric_features: which feature each metric uses, e.g. ``{'fid': 'pool', 'is': 'logits_unbiased'}``;
            metrics not listed use :attr:`default_feature`.
        default_feature: feature used when nothing else is said (the first of ``dims`` if empty).
        device: where the network runs.
        module: the underlying ``nn.Module`` if any (call it directly for differentiable use).
    """

    name: str
    fn: FeatureFn
    dims: dict[str, int | None] | None = None
    preprocessing: str = "none"
    weights_sha256: str | None = None
    metric_features: dict[str, str] = field(default_factory=dict)
    default_feature: str = ""
    device: torch.device | str = "cpu"
    module: nn.Module | None = None

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        if not self.default_feature and self.dims:
            self.default_feature = next(iter(self.dims))

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.dims or ())

    def feature_for(self, metric: str) -> str:
        """Name of the feature a metric (``'fid'``, ``'is'``, ``'kid'``, ...) uses with this extractor."""
        name = self.metric_features.get(metric, self.default_feature)
        if not name:
            raise MetricsError(f"extractor {self.name!r} does not say which feature {metric!r} uses")
        return name

    def provenance(self) -> dict[str, str | None]:
        """The fields to record next to a number: extractor name, weights checksum, resize policy."""
        return {"extractor": self.name, "weights_sha256": self.weights_sha256, "resize": self.preprocessing}

    @torch.no_grad()
    def __call__(
        self,
        images: ImageArray,
        *,
        features: Sequence[str] | None = None,
        value_range: tuple[float, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Features of a batch: ``{name: float32 CPU tensor [N, dim]}``.

        Args:
            images: uint8 (0..255) or float (in ``value_range``, default ``(0, 1)``) images, NCHW
                or NHWC; validated and quantised by :func:`skiptune.metrics.images.to_uint8_nchw`.
            features: names to return (default: all the extractor provides).
        """
        x = images if _is_canonical(images) else to_uint8_nchw(images, value_range=value_range)
        wanted = tuple(features) if features is not None else self.feature_names
        if self.dims is not None:
            unknown = [f for f in wanted if f not in self.dims]
            if unknown:
                raise MetricsError(
                    f"extractor {self.name!r} has no feature {unknown}; it has {list(self.dims)}"
                )
        raw = self.fn(x.to(self.device), wanted)
        out: dict[str, torch.Tensor] = {}
        for key in wanted if wanted else tuple(raw):
            if key not in raw:
                raise MetricsError(
                    f"extractor {self.name!r} did not return feature {key!r} (got {list(raw)})"
                )
            out[key] = raw[key].detach().to("cpu", torch.float32).reshape(x.shape[0], -1)
        self._check_dims(out)
        return out

    def float_features(
        self,
        images: torch.Tensor,
        *,
        features: Sequence[str] | None = None,
        value_range: tuple[float, float] = (-1.0, 1.0),
    ) -> dict[str, torch.Tensor]:
        """Features of float images *with gradients*, for feature-space losses (seed 003, Sec. 5.1 and 5.3).

        ``images`` ``[N, 1 or 3, H, W]`` in ``value_range`` are mapped linearly onto the 0..255 scale that
        :meth:`__call__` feeds the network, ``u = (x - lo) / (hi - lo) * 255``, *without* rounding or
        clipping (both would cut the gradient), gray images are repeated to RGB, and ``u`` goes to the
        extractor's function. The digits classifier, our Inception-V3, CLIP and :func:`wrap_module` apply
        only float operations to that input, so for images that are already quantised this equals
        :meth:`__call__` up to float rounding (foreign TorchScript detectors are not checked).
        Returns ``{name: [N, dim]}`` on the extractor's device, attached to the autograd graph.
        """
        if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
            raise MetricsError("float_features needs a float tensor [N, C, H, W]")
        if images.shape[0] == 0:
            raise MetricsError("the image batch is empty (N = 0)")
        if images.shape[1] not in (1, 3):
            raise MetricsError(f"images must have 1 or 3 channels (NCHW), got shape {tuple(images.shape)}")
        lo, hi = float(value_range[0]), float(value_range[1])
        if not hi > lo:
            raise MetricsError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")
        u = (images.to(self.device, torch.float32) - lo) * (255.0 / (hi - lo))
        if u.shape[1] == 1:
            u = u.expand(-1, 3, -1, -1)
        wanted = tuple(features) if features is not None else self.feature_names
        raw = self.fn(u, wanted)
        out = {}
        for key in wanted if wanted else tuple(raw):
            if key not in raw:
                raise MetricsError(f"extractor {self.name!r} did not return feature {key!r} (got {list(raw)})")
            out[key] = raw[key].to(torch.float32).reshape(u.shape[0], -1)
        return out

    def _check_dims(self, out: Mapping[str, torch.Tensor]) -> None:
        if self.dims is None:
            self.dims = {}
        for key, value in out.items():
            known = self.dims.get(key)
            if known is None:
                self.dims[key] = int(value.shape[1])
            elif known != value.shape[1]:
                raise FeatureDimMismatchError(
                    f"extractor {self.name!r} returned {value.shape[1]}-d {key!r} features, declared {known}"
                )
        if not self.default_feature and self.dims:
            self.default_feature = next(iter(self.dims))


def _is_canonical(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1] == 3


# ---------------------------------------------------------------------------------------------
# Any torch module as an extractor


def wrap_module(
    module: nn.Module,
    name: str,
    *,
    input_range: tuple[float, float] = (0.0, 1.0),
    size: tuple[int, int] | None = None,
    resize_mode: str = "bilinear",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    output_names: Sequence[str] | None = None,
    metric_features: Mapping[str, str] | None = None,
    weights_sha256: str | None = None,
    device: torch.device | str = "cpu",
) -> FeatureExtractor:
    """Turn any ``nn.Module`` mapping float images to features into a :class:`FeatureExtractor`.

    The uint8 images ``u`` become ``x = lo + u / 255 * (hi - lo)`` with ``(lo, hi) = input_range``,
    are resized to ``size`` with ``F.interpolate(mode=resize_mode, antialias=True)`` if given, and
    normalised per channel ``(x - mean) / std`` if given. The module's output may be a tensor
    (flattened to ``[N, -1]`` and named ``output_names[0]``, default ``'features'``), or a tuple/list
    or dict whose entries ``output_names`` lists. The first name is the default feature.

    ``weights_sha256`` defaults to ``'state_dict:' + sha256`` of the module's state dict.
    """
    module = module.eval().requires_grad_(False).to(device)
    lo, hi = float(input_range[0]), float(input_range[1])
    names = tuple(output_names) if output_names else ("features",)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) if mean is not None else None
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) if std is not None else None

    def fn(x: torch.Tensor, wanted: Sequence[str]) -> dict[str, torch.Tensor]:
        y = x.to(torch.float32) / 255.0 * (hi - lo) + lo
        if size is not None and tuple(y.shape[2:]) != tuple(size):
            align = False if resize_mode in ("bilinear", "bicubic") else None
            y = F.interpolate(
                y,
                size=tuple(size),
                mode=resize_mode,
                align_corners=align,
                antialias=resize_mode in ("bilinear", "bicubic"),
            )
        if mean_t is not None:
            y = y - mean_t.to(y.device)
        if std_t is not None:
            y = y / std_t.to(y.device)
        out = module(y)
        if isinstance(out, torch.Tensor):
            return {names[0]: out.reshape(out.shape[0], -1)}
        if isinstance(out, Mapping):
            return dict(out)
        if len(out) != len(names):
            raise MetricsError(f"module {name!r} returned {len(out)} outputs; pass output_names for each")
        return dict(zip(names, out, strict=True))

    parts = [f"uint8 -> float in [{lo:g}, {hi:g}]"]
    if size is not None:
        parts.append(f"resize to {size[0]}x{size[1]} ({resize_mode}, antialias)")
    if mean is not None or std is not None:
        parts.append(f"normalise mean={list(mean) if mean else 0} std={list(std) if std else 1}")
    return FeatureExtractor(
        name=name,
        fn=fn,
        dims=dict.fromkeys(names),
        preprocessing="; ".join(parts),
        weights_sha256=weights_sha256 or f"state_dict:{state_dict_sha256(module)}",
        metric_features=dict(metric_features or {}),
        device=device,
        module=module,
    )


# ---------------------------------------------------------------------------------------------
# Registry

ExtractorFactory = Callable[..., FeatureExtractor]
_REGISTRY: dict[str, ExtractorFactory] = {}
#: entry-point group through which installed packages (skiptune's own demo among them) offer extractors
ENTRY_POINT_GROUP = "skiptune.extractors"


def _load_entry_points() -> None:
    """Register every ``skiptune.extractors`` entry point not registered yet (loaded on first use).

    Higher layers (the demo's shipped classifiers) and third-party packages offer feature networks
    this way, so the metrics layer never imports them.
    """
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = _LazyFactory(ep)


class _LazyFactory:
    """An entry point imported only when its extractor is built."""

    def __init__(self, ep):
        self.ep = ep

    def __call__(self, **kwargs):
        return self.ep.load()(**kwargs)


def register_extractor(name: str, factory: ExtractorFactory, *, overwrite: bool = False) -> None:
    """Make ``get_extractor(name, **kwargs)`` call ``factory(**kwargs)``.

    This is the slot for domain feature networks (e.g. the demo classifier registers itself here).
    """
    if not name or not isinstance(name, str):
        raise InputError("extractor name must be a non-empty string")
    if name in _REGISTRY and not overwrite:
        raise InputError(f"extractor {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory


def unregister_extractor(name: str) -> None:
    """Remove a registered extractor (no error if absent)."""
    _REGISTRY.pop(name, None)


def available_extractors() -> list[str]:
    """Registered extractor names (including installed entry points), sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def factory_options(factory: ExtractorFactory) -> list[str] | None:
    """The keyword options a factory takes, or None when it takes any (``**kwargs``) or cannot be inspected."""
    if isinstance(factory, _LazyFactory):
        factory = factory.ep.load()
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def get_extractor(extractor: str | FeatureExtractor, **kwargs: object) -> FeatureExtractor:
    """Resolve an extractor: an instance is returned as is, a name is built by its factory.

    Options left at ``None`` (e.g. an unset ``--weights``) are not passed: the factory's default applies.
    Every built-in factory takes ``weights`` (the file of the network's weights) and ``device``; an option
    the factory does not take is an :class:`~skiptune.core.errors.InputError` naming the options it takes.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if isinstance(extractor, FeatureExtractor):
        if kwargs:
            raise InputError(f"options {sorted(kwargs)} can only be given with an extractor name, not an instance")
        return extractor
    if extractor not in _REGISTRY:
        _load_entry_points()
    if extractor not in _REGISTRY:
        raise UnknownNameError(f"unknown feature extractor {extractor!r}; registered: {available_extractors()}")
    factory = _REGISTRY[extractor]
    takes = factory_options(factory)
    unknown = sorted(set(kwargs) - set(takes)) if takes is not None else []
    if unknown:
        raise InputError(f"feature network {extractor!r} takes no option {', '.join(unknown)}; "
                         f"the options it takes: {', '.join(takes) or 'none'}")
    try:
        return factory(**kwargs)
    except TypeError as exc:  # a factory with **kwargs that passes them on to a function without that option
        refused = [k for k in kwargs if f"unexpected keyword argument '{k}'" in str(exc)]
        if not refused:
            raise
        raise InputError(f"feature network {extractor!r} takes no option {refused[0]} ({exc})") from None
