"""Image inputs for feature extraction: folders, ``.npz``/``.npy`` arrays and tensors.

Everything is brought to one canonical form, **uint8 NCHW with 3 channels**, which is what the FID
Inception networks of torch-fidelity and EDM consume. The policy, recorded with every number:

- ``uint8`` arrays are taken as they are (values 0..255).
- Float arrays must declare their ``value_range`` (default ``(0, 1)``; diffusion outputs are often
  ``(-1, 1)``). They are quantised like a PNG writer would:
  ``u = floor(clip((x - lo) / (hi - lo) * 255 + 0.5, 0, 255))``; for ``(-1, 1)`` this equals EDM's
  ``(x * 127.5 + 128).clip(0, 255).to(uint8)``. Values up to 10 % of the range outside it are
  clipped (samplers overshoot slightly); further out is an error, since it means the range is wrong.
- Layout: ``NCHW`` or ``NHWC``, detected from where the channel axis of size 1 or 3 is, or forced
  with ``layout=``. One channel is repeated to three (as EDM's ``fid.py`` does); other channel
  counts are errors.
- No resizing happens here: every image of a set must have one size. The feature network's own
  resize (e.g. TF-1 bilinear to 299x299 for Inception) is recorded by the extractor.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skiptune.core.errors import InputError, MissingFileError

from .errors import ImageFormatError
from .stats import describe_contents, read_npz

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
QUANTIZATION = "uint8: floor(clip((x-lo)/(hi-lo)*255+0.5, 0, 255)); gray repeated to RGB; no resize"
_RANGE_TOLERANCE = 0.1

ImageArray = np.ndarray | torch.Tensor


def _channel_axis(shape: Sequence[int], layout: str) -> int:
    if len(shape) != 4:
        raise ImageFormatError(
            f"images must be a 4-D batch (N, C, H, W) or (N, H, W, C); got shape {tuple(shape)}. "
            "Add a batch axis for a single image (x[None]) or a channel axis for grayscale (x[..., None])."
        )
    if layout == "NCHW":
        return 1
    if layout == "NHWC":
        return 3
    if layout != "auto":
        raise InputError(f"layout must be 'auto', 'NCHW' or 'NHWC', not {layout!r}")
    if shape[1] in (1, 3):
        return 1
    if shape[3] in (1, 3):
        return 3
    raise ImageFormatError(
        f"cannot find a channel axis of size 1 or 3 in shape {tuple(shape)} (neither NCHW nor NHWC). "
        "Images must be RGB or grayscale: drop alpha channels (x[..., :3]) and pass layout= if ambiguous."
    )


def to_uint8_nchw(
    images: ImageArray,
    *,
    value_range: tuple[float, float] | None = None,
    layout: str = "auto",
) -> torch.Tensor:
    """Validate a batch of images and return it as a uint8 ``[N, 3, H, W]`` CPU tensor.

    Args:
        images: numpy array or torch tensor, NCHW or NHWC, uint8/integer (0..255) or float.
        value_range: the ``(lo, hi)`` range of float inputs; default ``(0, 1)``. Ignored for uint8.
        layout: ``'auto'``, ``'NCHW'`` or ``'NHWC'``.

    Raises:
        ImageFormatError: wrong number of axes or channels, empty batch, NaN/inf, or values far
            outside ``value_range`` (the message suggests the right range).
    """
    if isinstance(images, torch.Tensor):
        x = images.detach()
    else:
        a = np.asarray(images)
        x = torch.from_numpy(a if a.flags.writeable else a.copy())
    axis = _channel_axis(tuple(x.shape), layout)
    if axis == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[0] == 0:
        raise ImageFormatError("the image batch is empty (N = 0)")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ImageFormatError(f"images have an empty spatial size {tuple(x.shape[2:])}")
    x = x.cpu()
    if x.dtype == torch.uint8:
        out = x
    elif x.dtype == torch.bool or x.is_complex():
        raise ImageFormatError(f"images of dtype {x.dtype} are not supported; use uint8 or float")
    elif not x.is_floating_point():
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ImageFormatError(
                f"integer images have values in [{lo}, {hi}], outside 0..255; "
                "8-bit images are expected (convert 16-bit images to 8 bits first)"
            )
        out = x.to(torch.uint8)
    else:
        out = _quantize_float(x, value_range if value_range is not None else (0.0, 1.0))
    if out.shape[1] == 1:
        out = out.expand(-1, 3, -1, -1)
    return out.contiguous()


def _quantize_float(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = float(value_range[0]), float(value_range[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise InputError(f"value_range must be finite with lo < hi, got {value_range}")
    x = x.to(torch.float64)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ImageFormatError(
            f"images contain {bad} NaN/inf values; fix the generator output before measuring it"
        )
    vmin, vmax = float(x.min()), float(x.max())
    tol = _RANGE_TOLERANCE * (hi - lo)
    if vmin < lo - tol or vmax > hi + tol:
        guess = (
            "(0, 255) or convert to uint8" if vmax > 2.0 else "(-1, 1)" if vmin < -0.2 else "the right range"
        )
        raise ImageFormatError(
            f"float images have values in [{vmin:.4g}, {vmax:.4g}], outside value_range=({lo:g}, {hi:g}) "
            f"by more than 10%; pass value_range={guess}"
        )
    u = torch.floor(((x - lo) / (hi - lo) * 255.0 + 0.5).clamp(0.0, 255.0))
    return u.to(torch.uint8)


@dataclass
class ImageSource:
    """A set of images that can be read in batches of canonical uint8 NCHW tensors.

    Attributes:
        description: what the images are (a path, or ``'tensor[N,C,H,W]'``), recorded with results.
        num_images: how many images the source yields.
        image_size: ``(H, W)`` of every image.
        fingerprint: sha256 of the pixels (arrays) or of the file list with sizes and mtimes
            (folders); feature caches are keyed on it.
    """

    description: str
    num_images: int
    image_size: tuple[int, int]
    fingerprint: str = ""
    _array: torch.Tensor | None = None
    _files: tuple[Path, ...] = ()

    def subset(self, lo: int, hi: int) -> ImageSource:
        """Images ``lo .. hi-1`` of this source (same order), e.g. one process's share of a folder."""
        if not 0 <= lo <= hi <= self.num_images:
            raise InputError(f"subset [{lo}, {hi}) is outside the {self.num_images} images of {self.description}")
        return ImageSource(f"{self.description}[{lo}:{hi}]", hi - lo, self.image_size, f"{self.fingerprint}[{lo}:{hi}]",
                           _array=None if self._array is None else self._array[lo:hi], _files=self._files[lo:hi])

    def batches(self, batch_size: int = 64) -> Iterator[torch.Tensor]:
        """Yield uint8 ``[B, 3, H, W]`` batches in a fixed order (sorted file names for folders)."""
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if self._array is not None:
            for i in range(0, self.num_images, batch_size):
                yield self._array[i : i + batch_size]
            return
        for i in range(0, self.num_images, batch_size):
            chunk = self._files[i : i + batch_size]
            arrays = [_read_image(p, self.image_size) for p in chunk]
            yield to_uint8_nchw(np.stack(arrays), layout="NHWC")


def decode_image(path: str | os.PathLike):
    """Decode one image file into a loaded ``PIL.Image`` (file closed), or raise :class:`ImageFormatError`
    naming the file and what is wrong with it: empty, not an image (said what it is instead: a text
    file, an HTML page, ...), truncated or corrupt image data, too large to decode, or unreadable.

    The one place where skiptune decodes image files: the metrics' image folders and the training data's
    folders both read through it.
    """
    import struct
    import zlib

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageFormatError(f"{path}: cannot read this image file ({exc.strerror or exc})") from None
    if size == 0:
        raise ImageFormatError(f"{path}: an empty file (0 bytes), not an image; delete it or replace it")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except UnidentifiedImageError:
        raise ImageFormatError(f"{path}: not an image file: it is {describe_contents(path)}, not PNG or JPEG data; "
                               "delete it or move it out of the image folder") from None
    except Image.DecompressionBombError as exc:
        raise ImageFormatError(f"{path}: too large to decode safely ({exc})") from None
    except PermissionError as exc:
        raise ImageFormatError(f"{path}: cannot read this image file ({exc.strerror or exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error) as exc:
        raise ImageFormatError(f"{path}: truncated or corrupt image data ({size} bytes; the decoder says: "
                               f"{exc}); re-export or delete the file") from None


def _read_image(path: Path, expected: tuple[int, int] | None) -> np.ndarray:
    im = decode_image(path)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise ImageFormatError(
            f"{path}: {im.mode} (16-bit or float) images are not supported; save 8-bit"
        )
    if im.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(im.getchannel("A"))
        if (alpha != 255).any():
            raise ImageFormatError(
                f"{path} has a transparent alpha channel (mode {im.mode}); "
                "flatten it onto a background first"
            )
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")  # palette, CMYK, bilevel, opaque alpha
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if expected is not None and tuple(arr.shape[:2]) != tuple(expected):
        raise ImageFormatError(
            f"{path} is {arr.shape[1]}x{arr.shape[0]} but earlier images are {expected[1]}x{expected[0]}; "
            "all images of a set must have one size (resize them beforehand: skiptune never resizes "
            "silently because it changes FID)"
        )
    return arr


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """All PNG/JPEG files under ``folder`` (recursive), sorted by relative path."""
    root = Path(folder)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_npz_images(path: str | os.PathLike) -> np.ndarray:
    """Read the image array of an ``.npz`` (key ``images`` or ``arr_0``) or ``.npy`` file.

    A file that is not one (a text file named ``.npz``, a damaged archive, pickled objects, ...) is an
    :class:`ImageFormatError` naming the file and what it holds instead.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        with open(path, "rb") as f:
            head = f.read(6)
        if head != b"\x93NUMPY":
            raise ImageFormatError(f"{path} is not a NumPy .npy array: it is {describe_contents(path)}")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ImageFormatError(f"{path}: a damaged or object (pickled) .npy array: {exc}") from None
    data = read_npz(path, what="an .npz of images", keys=("images", "arr_0"), error=ImageFormatError)
    for key in ("images", "arr_0"):
        if key in data:
            return data[key]
    keys = data.files
    if "mu" in keys and "sigma" in keys:
        raise ImageFormatError(
            f"{path} holds feature statistics (mu, sigma), not images; pass it as the reference"
        )
    raise ImageFormatError(
        f"{path} has no 'images' or 'arr_0' array (keys: {keys}); save images under 'images'"
    )


def open_images(
    images: str | os.PathLike | ImageArray | ImageSource,
    *,
    value_range: tuple[float, float] | None = None,
    layout: str = "auto",
) -> ImageSource:
    """Open an image folder, an ``.npz``/``.npy`` file, or an in-memory array as an :class:`ImageSource`.

    Folders are read lazily, batch by batch; arrays are validated at once with :func:`to_uint8_nchw`.
    """
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            files = list_image_files(path)
            if not files:
                raise ImageFormatError(f"no PNG/JPEG images found under {path}")
            first = _read_image(files[0], None)
            h = hashlib.sha256()
            for f in files:
                st = f.stat()
                h.update(f"{f.relative_to(path).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            return ImageSource(
                str(path), len(files), tuple(first.shape[:2]), h.hexdigest(), _files=tuple(files)
            )
        if not path.exists():
            raise MissingFileError(
                f"image source {path} does not exist (expected a folder or .npz/.npy file)"
            )
        if path.suffix.lower() not in (".npz", ".npy"):
            raise ImageFormatError(f"{path}: expected a folder of PNG/JPEG images or an .npz/.npy array file")
        arr = to_uint8_nchw(load_npz_images(path), value_range=value_range, layout=layout)
        return ImageSource(str(path), arr.shape[0], tuple(arr.shape[2:]), _pixel_sha256(arr), _array=arr)
    arr = to_uint8_nchw(images, value_range=value_range, layout=layout)
    desc = f"{type(images).__name__}[{', '.join(str(s) for s in arr.shape)}]"
    return ImageSource(desc, arr.shape[0], tuple(arr.shape[2:]), _pixel_sha256(arr), _array=arr)


def _pixel_sha256(x: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(x.contiguous().numpy().tobytes())
    return h.hexdigest()
