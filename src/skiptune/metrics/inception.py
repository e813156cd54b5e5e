"""The FID Inception-V3 (TensorFlow graph of 2015-12-05) in plain torch, loaded from a local file.

Architecture facts (learned from torch-fidelity's ``FeatureExtractorInceptionV3``, Apache-2.0, and
the TF graph it was converted from; this is an independent implementation):

- Input: uint8 RGB (or float in 0..255), resized to 299x299 with TensorFlow-1.x bilinear resampling
  (``align_corners=False``, no half-pixel centres; see :func:`resize_bilinear_tf1`), then mapped
  to ``(x - 128) / 128``.
- Stem ``Conv2d_1a_3x3`` ... ``Conv2d_4a_3x3`` with two 3x3/2 max pools; every conv is
  ``conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU``.
- ``Mixed_5b/5c/5d`` (InceptionA, pool branch 32/64/64), ``Mixed_6a`` (B), ``Mixed_6b..6e``
  (InceptionC, 7x7 width 128/160/160/192), ``Mixed_7a`` (D), ``Mixed_7b``/``7c`` (E). The
  average pools in the branches exclude padding (TF semantics); the pool branch of ``Mixed_7c`` is
  a *max* pool (a quirk of the 2015 graph).
- Global average pool -> ``pool`` (2048-d, "pool3", the FID features); ``fc`` 2048 -> 1008 gives
  ``logits``; ``logits_unbiased`` omits the fc bias, as the original Inception Score code did
  (used for IS by torch-fidelity and by StyleGAN3/EDM via ``no_output_bias=True``).

Weights: ``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity; pytorch-fid ships the same
bytes as ``pt_inception-2015-12-05-6726825d.pth``). Nothing is downloaded: pass the file or a
directory, or put it in ``$SKIPTUNE_WEIGHTS``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from skiptune.core.errors import InputError

from .errors import MetricsError, MissingWeightsError
from .extractor import FeatureExtractor, check_weights_sha256, file_sha256, normalize_sha256

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_ALT_FILENAMES = ("pt_inception-2015-12-05-6726825d.pth",)
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_BYTES = 95_628_359
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SIZE = 299
INCEPTION_NAME = "inception-v3-tf2015"
INCEPTION_PREPROCESSING = (
    "uint8 RGB -> TF1 bilinear resize to 299x299 (align_corners=False, float32 coordinates) -> (x-128)/128"
)
INCEPTION_METRIC_FEATURES = {
    "fid": "pool",
    "kid": "pool",
    "pr": "pool",
    "mmd": "pool",
    "cmmd": "pool",
    "immd": "pool",
    "is": "logits_unbiased",
}
WEIGHTS_ENV = "SKIPTUNE_WEIGHTS"


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with TensorFlow 1.x semantics (``tf.image.resize_bilinear``, ``align_corners=False``).

    For an output index ``i`` the source coordinate is ``s = i * in / out`` (computed in float32,
    like TF), ``lo = floor(s)``, ``hi = min(lo + 1, in - 1)``, ``t = s - lo``; rows are first
    interpolated along x, ``top = a + (b - a) t_x``, then along y, ``out = top + (bottom - top) t_y``.
    Unlike ``F.interpolate`` there is no half-pixel offset, so the image is not centred: this is the
    resampling the 2015 graph applied and that FID numbers in the literature depend on.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise InputError("resize_bilinear_tf1 expects a float NCHW tensor")
    out_h, out_w = size
    in_h, in_w = x.shape[2], x.shape[3]

    def coords(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(n_in / n_out, dtype=torch.float32)
        s = torch.arange(n_out, dtype=torch.float32) * scale
        lo = s.to(torch.int64)
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo.to(x.device), hi.to(x.device), (s - lo.to(torch.float32)).to(x.device, x.dtype)

    ylo, yhi, ty = coords(in_h, out_h)
    xlo, xhi, tx = coords(in_w, out_w)
    top, bottom = x.index_select(2, ylo), x.index_select(2, yhi)
    top = top.index_select(3, xlo) + (top.index_select(3, xhi) - top.index_select(3, xlo)) * tx
    bottom = bottom.index_select(3, xlo) + (bottom.index_select(3, xhi) - bottom.index_select(3, xlo)) * tx
    return top + (bottom - top) * ty.view(1, 1, -1, 1)


class BasicConv2d(nn.Module):
    """``conv (no bias) -> BatchNorm2d(eps=1e-3) -> ReLU`` (parameter names ``conv.*``, ``bn.*``)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int, c) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, c(64), 1)
        self.branch5x5_1 = BasicConv2d(c_in, c(48), 1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, c(pool_features), 1)
        self.out_channels = c(64) + c(64) + c(96) + c(pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b1, b5, b3, self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, c_in: int, c) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, c(384), 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, stride=2)
        self.out_channels = c(384) + c(96) + c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, c_in: int, channels_7x7: int, c) -> None:
        super().__init__()
        c7 = c(channels_7x7)
        self.branch1x1 = BasicConv2d(c_in, c(192), 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, c(192), (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, c(192), (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, c(192), 1)
        self.out_channels = 4 * c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([b1, b7, bd, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, c_in: int, c) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, c(192), 1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, c(192), 1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), 3, stride=2)
        self.out_channels = c(320) + c(192) + c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, c_in: int, pool: str, c) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, c(320), 1)
        self.branch3x3_1 = BasicConv2d(c_in, c(384), 1)
        self.branch3x3_2a = BasicConv2d(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, c(448), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c(384), 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, c(192), 1)
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """The TF-2015 FID Inception-V3. ``width`` scales every channel count (1.0 = the real network;
    small widths give tiny test models with the same parameter names).

    ``forward(x, features=('pool',))`` takes uint8 or float (0..255) RGB NCHW images of any size and
    returns a dict with the requested ``'pool'``, ``'logits_unbiased'`` and ``'logits'``. It is
    differentiable for float input.
    """

    FEATURES = ("pool", "logits_unbiased", "logits")

    def __init__(self, width: float = 1.0, num_classes: int = 1008) -> None:
        super().__init__()
        if width <= 0:
            raise InputError(f"width must be > 0, got {width}")
        self.width = float(width)

        def c(n: int) -> int:
            return max(1, round(n * width))

        self.Conv2d_1a_3x3 = BasicConv2d(3, c(32), 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(c(32), c(32), 3)
        self.Conv2d_2b_3x3 = BasicConv2d(c(32), c(64), 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(c(64), c(80), 1)
        self.Conv2d_4a_3x3 = BasicConv2d(c(80), c(192), 3)
        blocks: list[tuple[str, nn.Module]] = []
        ch = c(192)
        for name, make in (
            ("Mixed_5b", lambda i: InceptionA(i, 32, c)),
            ("Mixed_5c", lambda i: InceptionA(i, 64, c)),
            ("Mixed_5d", lambda i: InceptionA(i, 64, c)),
            ("Mixed_6a", lambda i: InceptionB(i, c)),
            ("Mixed_6b", lambda i: InceptionC(i, 128, c)),
            ("Mixed_6c", lambda i: InceptionC(i, 160, c)),
            ("Mixed_6d", lambda i: InceptionC(i, 160, c)),
            ("Mixed_6e", lambda i: InceptionC(i, 192, c)),
            ("Mixed_7a", lambda i: InceptionD(i, c)),
            ("Mixed_7b", lambda i: InceptionE(i, "avg", c)),
            ("Mixed_7c", lambda i: InceptionE(i, "max", c)),
        ):
            block = make(ch)
            setattr(self, name, block)
            blocks.append((name, block))
            ch = block.out_channels
        self._mixed = [name for name, _ in blocks]
        self.pool_dim = ch
        self.num_classes = num_classes
        self.fc = nn.Linear(ch, num_classes)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> InceptionV3:
        """Build a network whose width and class count match ``state_dict`` and load it strictly."""
        sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
        for key in ("Conv2d_1a_3x3.conv.weight", "fc.weight"):
            if key not in sd:
                raise MetricsError(
                    f"not an FID Inception-V3 state dict: key {key!r} is missing (first keys: {list(sd)[:5]})"
                )
        net = cls(width=sd["Conv2d_1a_3x3.conv.weight"].shape[0] / 32, num_classes=sd["fc.weight"].shape[0])
        expected = {
            k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")
        }
        got = {k: tuple(v.shape) for k, v in sd.items()}
        if expected != got:
            missing = sorted(set(expected) - set(got))[:5]
            unexpected = sorted(set(got) - set(expected))[:5]
            shapes = [k for k in expected if k in got and expected[k] != got[k]][:5]
            raise MetricsError(
                f"state dict does not match the Inception-V3 layout: missing {missing}, "
                f"unexpected {unexpected}, "
                f"shape mismatches {shapes}"
            )
        net.load_state_dict(sd, strict=False)
        return net.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, features: Sequence[str] = ("pool",)) -> dict[str, torch.Tensor]:
        unknown = set(features) - set(self.FEATURES)
        if unknown:
            raise InputError(f"unknown Inception features {sorted(unknown)}; choose from {self.FEATURES}")
        dtype = self.fc.weight.dtype
        x = resize_bilinear_tf1(x.to(dtype), (INCEPTION_SIZE, INCEPTION_SIZE))
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in self._mixed:
            x = getattr(self, name)(x)
        pool = x.mean(dim=(2, 3))
        out = {"pool": pool}
        if "logits_unbiased" in features or "logits" in features:
            unbiased = pool @ self.fc.weight.T
            out["logits_unbiased"] = unbiased
            out["logits"] = unbiased + self.fc.bias
        return {k: out[k] for k in features}


# ---------------------------------------------------------------------------------------------
# Weights and the extractor


def _candidate_dirs() -> list[Path]:
    dirs = [Path(d) for d in os.environ.get(WEIGHTS_ENV, "").split(os.pathsep) if d]
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def missing_weights_message(looked: Sequence[Path]) -> str:
    names = ", ".join([INCEPTION_FILENAME, *INCEPTION_ALT_FILENAMES])
    return (
        f"FID Inception-V3 weights not found. Need the file {INCEPTION_FILENAME!r} "
        f"(sha256 {INCEPTION_SHA256}, {INCEPTION_BYTES:,} bytes; accepted names: {names}). "
        f"Looked in: {', '.join(str(p) for p in looked) or '(nowhere)'}"
        f"{'' if os.environ.get(WEIGHTS_ENV) else f' (${WEIGHTS_ENV} is unset)'}. "
        f"Put it in a directory and set {WEIGHTS_ENV}=/that/dir, "
        f"or pass weights='/path/to/{INCEPTION_FILENAME}'. "
        f"skiptune never downloads; on a machine with internet it is at {INCEPTION_URL}"
    )


def find_inception_weights(weights: str | os.PathLike | None = None) -> Path:
    """Locate the Inception weights: ``weights`` (a file, or a directory holding it), else the
    directories in ``$SKIPTUNE_WEIGHTS``, else torch's hub checkpoint cache (where torch-fidelity and
    pytorch-fid keep it).

    Raises:
        MissingWeightsError: (a ``FileNotFoundError``) naming the file, its sha256 and where to put it.
    """
    names = (INCEPTION_FILENAME, *INCEPTION_ALT_FILENAMES)
    if weights is not None:
        path = Path(weights)
        if path.is_file():
            return path
        if not path.is_dir():
            raise MissingWeightsError(missing_weights_message([path]))
        dirs = [path]
    else:
        dirs = _candidate_dirs()
    for d in dirs:
        for name in names:
            if (d / name).is_file():
                return d / name
    raise MissingWeightsError(missing_weights_message(dirs))


def load_inception_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` state dict with ``torch.load(weights_only=True)`` (no code runs)."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise MetricsError(f"{path} is not a state dict of tensors")
    return sd


def inception_v3(
    weights: str | os.PathLike | None = None,
    *,
    expected_sha256: str | None = INCEPTION_SHA256,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FeatureExtractor:
    """The FID Inception-V3 feature extractor (features ``pool``, ``logits_unbiased``, ``logits``).

    Args:
        weights: the ``.pth`` file or a directory holding it; default: search ``$SKIPTUNE_WEIGHTS``
            and torch's hub cache (see :func:`find_inception_weights`).
        expected_sha256: checksum the file must have; ``None`` or ``'any'`` accepts any Inception-shaped
            state dict (the extractor is then named ``'inception-v3-custom'`` unless the file is the
            official one). The actual file sha256 is always recorded.
        dtype: internal dtype (``torch.float64`` for extra precision).

    Raises:
        MissingWeightsError: the file is not found (the message says which file and where to put it).
        ChecksumMismatchError: the file's sha256 differs from ``expected_sha256``.
    """
    want = normalize_sha256(expected_sha256)  # a malformed checksum fails before the file is looked for
    path = find_inception_weights(weights)
    sha = file_sha256(path)
    official = f" ({INCEPTION_FILENAME})" if want == INCEPTION_SHA256 else ""
    check_weights_sha256(path, sha, want, f"{official}; results from other weights are labelled 'inception-v3-custom'")
    net = InceptionV3.from_state_dict(load_inception_state_dict(path)).to(device=device, dtype=dtype)
    return inception_extractor(
        net, INCEPTION_NAME if sha == INCEPTION_SHA256 else "inception-v3-custom", sha, device
    )


def inception_extractor(
    net: InceptionV3, name: str, sha256: str, device: torch.device | str
) -> FeatureExtractor:
    """Wrap a loaded :class:`InceptionV3` as a :class:`FeatureExtractor`
    (features ``pool``, ``logits_unbiased``, ``logits``)."""

    def fn(x: torch.Tensor, wanted: Sequence[str]) -> dict[str, torch.Tensor]:
        return net(x, features=tuple(wanted) or ("pool",))

    return FeatureExtractor(
        name=name,
        fn=fn,
        dims={"pool": net.pool_dim, "logits_unbiased": net.num_classes, "logits": net.num_classes},
        preprocessing=INCEPTION_PREPROCESSING,
        weights_sha256=sha256,
        metric_features=dict(INCEPTION_METRIC_FEATURES),
        default_feature="pool",
        device=device,
        module=net,
    )
