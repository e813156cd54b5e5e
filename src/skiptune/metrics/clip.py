"""Optional CLIP image embeddings through ``open_clip`` (``pip install skiptune[clip]``), for CMMD.

CMMD (Jayasumana et al. 2024) uses L2-normalised CLIP image embeddings. Preprocessing here: uint8
RGB -> [0, 1] -> bicubic resize (antialiased) of the shorter side to the model's input size ->
centre crop -> per-channel normalisation with the model's mean/std -> ``encode_image`` ->
``e / ||e||``. ``open_clip`` is imported only when this extractor is built; weights must be a local
file (nothing is downloaded).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from skiptune.core.errors import InputError, SkiptuneError

from .errors import MissingWeightsError
from .extractor import FeatureExtractor, check_weights_sha256, file_sha256, normalize_sha256

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_INSTALL_HINT = "CLIP features need the optional package open_clip: pip install 'skiptune[clip]'"


class MissingPackageError(SkiptuneError, ImportError):
    """An optional package a feature network needs is not installed (the message says how to install it)."""


def _import_open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise MissingPackageError(CLIP_INSTALL_HINT) from e
    return open_clip


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic antialiased resize of the shorter side to ``size``, then a centred ``size x size`` crop."""
    h, w = x.shape[2], x.shape[3]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, :, top : top + size, left : left + size]


def clip_extractor(
    model: str = "ViT-B-32",
    pretrained: str | os.PathLike | None = None,
    *,
    weights: str | os.PathLike | None = None,
    expected_sha256: str | None = None,
    device: torch.device | str = "cpu",
) -> FeatureExtractor:
    """CLIP image-embedding extractor (feature ``'embedding'``, L2-normalised) from a local checkpoint.

    Args:
        model: an ``open_clip`` architecture name, e.g. ``'ViT-B-32'`` or ``'ViT-L-14-336'`` (CMMD's).
        pretrained: path of the checkpoint file; ``weights`` is the same (the name every registered
            extractor takes, ``--weights`` on the command line).
        expected_sha256: checksum the file must have; ``None`` or ``'any'`` accepts it. The file's own
            sha256 is always recorded.

    Raises:
        MissingPackageError: (an ``ImportError``) ``open_clip`` is not installed (the message names
            ``skiptune[clip]``).
        MissingWeightsError: ``pretrained`` is missing or not a file.
        ChecksumMismatchError: the file's sha256 differs from ``expected_sha256``.
    """
    if weights is not None:
        if pretrained is not None and Path(pretrained) != Path(weights):
            raise InputError(f"give the CLIP checkpoint once: pretrained={pretrained!r} and weights={weights!r} "
                             "differ")
        pretrained = weights
    want = normalize_sha256(expected_sha256)
    open_clip = _import_open_clip()
    if pretrained is None or not Path(pretrained).is_file():
        raise MissingWeightsError(
            f"CLIP weights for {model!r} not found ({pretrained!r}); pass pretrained='/path/to/checkpoint' "
            "(on the command line --weights /path/to/checkpoint; skiptune never downloads weights)"
        )
    sha = file_sha256(pretrained)
    check_weights_sha256(pretrained, sha, want)
    net, _, _ = open_clip.create_model_and_transforms(model, pretrained=str(pretrained), device=device)
    net = net.eval().requires_grad_(False)
    visual = getattr(net, "visual", net)
    size = getattr(visual, "image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = torch.tensor(getattr(visual, "image_mean", None) or OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(getattr(visual, "image_std", None) or OPENAI_STD).view(1, 3, 1, 1)

    def fn(x: torch.Tensor, wanted: Sequence[str]) -> dict[str, torch.Tensor]:
        y = resize_center_crop(x.to(torch.float32) / 255.0, size)
        y = (y - mean.to(y.device)) / std.to(y.device)
        e = net.encode_image(y).to(torch.float32)
        return {"embedding": e / e.norm(dim=1, keepdim=True)}

    return FeatureExtractor(
        name=f"clip-{model}",
        fn=fn,
        dims={"embedding": None},
        preprocessing=f"uint8 -> [0,1] -> bicubic antialiased resize of shorter side to {size} -> "
        f"centre crop "
        f"{size}x{size} -> normalise (CLIP mean/std) -> L2-normalised embedding",
        weights_sha256=sha,
        default_feature="embedding",
        device=device,
        module=net,
    )
