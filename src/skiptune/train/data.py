"""Training data: one small in-memory interface and the loaders behind ``load_dataset(spec)``.

Every data set is an :class:`ImageDataset`: float32 images in [-1, 1], NCHW, square, with optional
integer labels 0..num_classes-1. The specs:

- ``digits``: scikit-learn's bundled handwritten digits (1797 images, 8x8, values 0..16, 10 classes,
  no download). Each image is divided by 16, upsampled to 16x16 (or ``resolution``) by bilinear interpolation
  (``torch.nn.functional.interpolate(mode='bilinear', align_corners=False)``; every output pixel is
  a convex combination of input pixels, so values stay in [0, 1]) and mapped by ``2 v - 1``.
  A fixed, class-stratified held-out split: within each class the images are ordered by
  ``sha256(f"skiptune-digits:{index}")`` and the first 30 go to ``split='test'`` (300 images),
  the rest to ``'train'`` (1497). The split depends on no random number generator or library version.
- ``shapes``: a procedurally generated multimodal 32x32 RGB set (:func:`make_shapes`), 5 classes.
- a folder of PNG/JPEG images (labels from first-level sub-folder names, if every image is in one).
- an ``.npz`` file: images under ``images`` or ``arr_0`` (uint8 NHWC/NCHW mapped by ``u / 127.5 - 1``,
  or float NCHW/NHWC already in [-1, 1]), optional integer ``labels``.

Folders and arrays have no built-in split: ``split='train'`` (or ``'all'``) is the whole set.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from skiptune.core.errors import InputError, MissingFileError

DIGITS_TEST_PER_CLASS = 30
SHAPES_CLASSES = ("disc", "ring", "square", "triangle", "cross")
SHAPES_SIZES = {"train": 10_000, "test": 2_000}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test", "all")


@dataclass
class ImageDataset:
    """Images in [-1, 1] (float32, ``[N, C, R, R]``), optional labels (int64, ``[N]``) and provenance.

    ``num_classes`` is 0 for unlabelled sets; ``class_names`` names the label values when known;
    ``source`` says where the images came from (recorded in training configs); ``attributes`` holds
    optional further per-image integer factors (``[N]`` each), e.g. the palette of a shapes image.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None = None
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    source: str = ""
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        x = self.images
        if x.ndim != 4 or x.shape[2] != x.shape[3] or x.shape[0] == 0:
            raise InputError(f"{self.name}: images must be a non-empty [N, C, R, R] batch, got {tuple(x.shape)}")
        if x.dtype != torch.float32:
            raise InputError(f"{self.name}: images must be float32, got {x.dtype}")
        if self.labels is not None:
            if self.labels.shape != (x.shape[0],):
                raise InputError(f"{self.name}: {tuple(self.labels.shape)} labels for {x.shape[0]} images")
            if self.num_classes < 1 or int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes:
                raise InputError(f"{self.name}: labels must lie in 0..num_classes-1 (num_classes={self.num_classes})")
        for key, value in self.attributes.items():
            if value.shape != (x.shape[0],):
                raise InputError(f"{self.name}: attribute {key!r} has shape {tuple(value.shape)}, want ({x.shape[0]},)")

    def __len__(self) -> int:
        return self.images.shape[0]

    def head(self, n: int | None, *, what: str = "n") -> ImageDataset:
        """The first ``n`` images (with their labels and attributes); ``None``: all of them.

        ``n`` must lie in 1..len(self): asking for more images than there are is an
        :class:`~skiptune.core.errors.InputError` (``what`` names the option in the message), never a
        silently smaller set.
        """
        if n is None:
            return self
        check_count(n, what)
        if n > len(self):
            raise InputError(f"{what} {n}: {self.name} has only {len(self)} images ({self.source}); "
                             f"use {what} {len(self)} or fewer")
        return ImageDataset(self.name, self.images[:n], None if self.labels is None else self.labels[:n],
                            self.num_classes, list(self.class_names), f"{self.source}, first {n}",
                            {k: v[:n] for k, v in self.attributes.items()})

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def fingerprint(self) -> str:
        """sha256 of the image (and label) bytes: identifies exactly what a model was trained on."""
        h = hashlib.sha256(self.images.detach().cpu().contiguous().numpy().tobytes())
        if self.labels is not None:
            h.update(self.labels.cpu().numpy().astype("<i8").tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        """A JSON-ready summary (name, size, shape, classes, source, fingerprint)."""
        return {"name": self.name, "source": self.source, "size": len(self), "resolution": self.resolution,
                "channels": self.channels, "num_classes": self.num_classes, "class_names": self.class_names,
                "value_range": [-1.0, 1.0], "fingerprint": self.fingerprint()}


def check_count(n: int, what: str = "n") -> None:
    """A number of images must be an integer >= 1 (``what`` names the option in the message)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"{what} must be an integer >= 1 (a number of images), got {n!r}")


def uint8_to_unit(u: torch.Tensor) -> torch.Tensor:
    """Map 8-bit pixel values to [-1, 1]: ``u / 127.5 - 1`` (0 -> -1, 255 -> 1)."""
    return u.to(torch.float32) / 127.5 - 1


# ---------------------------------------------------------------------------------------------- digits

def digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed ``{'train', 'test'}`` indices into ``sklearn.datasets.load_digits()`` (sorted, disjoint)."""
    target = _sklearn_digits().target
    test = []
    for c in range(10):
        members = np.flatnonzero(target == c)
        keys = [hashlib.sha256(f"skiptune-digits:{i}".encode()).hexdigest() for i in members]
        test.extend(members[np.argsort(keys, kind="stable")[:DIGITS_TEST_PER_CLASS]].tolist())
    test_idx = np.array(sorted(test), dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(target)), test_idx)
    return {"train": train_idx, "test": test_idx}


def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the 'digits' data set needs scikit-learn (pip install 'skiptune[demo]')") from None
    return load_digits()


def load_digits_dataset(split: str = "train", resolution: int = 16) -> ImageDataset:
    """scikit-learn's digits as described in the module docstring (``split`` 'train', 'test' or 'all')."""
    _check_split(split)
    raw = _sklearn_digits()
    idx = np.arange(len(raw.target)) if split == "all" else digits_split_indices()[split]
    x = torch.from_numpy(raw.images[idx].astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return ImageDataset("digits", (2 * x - 1).clamp(-1, 1).contiguous(), torch.from_numpy(raw.target[idx]).long(),
                        10, [str(c) for c in range(10)], f"sklearn.datasets.load_digits, split={split}")


# ---------------------------------------------------------------------------------------------- shapes

# Five colours per palette; foreground and background are two different colours of one palette.
SHAPES_PALETTES = np.array([
    [(0.93, 0.33, 0.23), (0.98, 0.75, 0.22), (0.55, 0.13, 0.25), (0.99, 0.93, 0.75), (0.30, 0.16, 0.10)],  # warm
    [(0.16, 0.40, 0.78), (0.25, 0.78, 0.76), (0.48, 0.30, 0.72), (0.85, 0.93, 0.98), (0.06, 0.12, 0.28)],  # cool
    [(0.42, 0.56, 0.22), (0.80, 0.68, 0.42), (0.55, 0.35, 0.20), (0.93, 0.89, 0.80), (0.18, 0.24, 0.14)],  # earth
    [(0.98, 0.20, 0.62), (0.20, 0.95, 0.40), (0.15, 0.85, 0.98), (0.98, 0.98, 0.30), (0.10, 0.05, 0.15)],  # neon
    [(0.20, 0.20, 0.20), (0.50, 0.50, 0.50), (0.80, 0.80, 0.80), (0.97, 0.97, 0.97), (0.03, 0.03, 0.03)],  # gray
], dtype=np.float32)
SHAPES_BACKGROUNDS = ("flat", "gradient", "stripes")
_SHAPES_CHUNK = 256
_SHAPES_STREAM = {"train": 0, "test": 1}


def make_shapes(n: int, seed: int = 0, resolution: int = 32, split: str = "train") -> ImageDataset:
    """``n`` procedurally drawn images of 5 classes of shapes (label = :data:`SHAPES_CLASSES` index).

    Image ``i`` has label ``i mod 5`` (balanced classes). Its shape (disc, ring, square, triangle,
    plus-shaped cross) has a random centre, size (circumradius 0.18..0.36 of the side) and rotation,
    and is drawn anti-aliased over a 1-pixel band (coverage ``clip(1/2 - sdf, 0, 1)`` of a signed
    distance in pixels) in one colour of a random palette with a light linear shading; the background
    is another colour of that palette, flat, a linear gradient to a third colour, or low-contrast
    stripes. Uniform grain (std 0.02) is added and the result quantised to 8 bits, so that the set
    saves losslessly as PNG. The images are a pure function of ``(seed, split, i)``: they come from
    chunks of 256 drawn by ``numpy.random.default_rng([seed, split_id, chunk])``, so the first k images
    of any larger set are the same, and 'train' and 'test' use different streams. The dataset's
    ``attributes`` hold each image's ``palette`` (index into :data:`SHAPES_PALETTES`) and
    ``background`` (index into :data:`SHAPES_BACKGROUNDS`).
    """
    if n < 1:
        raise InputError(f"shapes: n must be >= 1, got {n}")
    if split not in _SHAPES_STREAM:
        raise InputError(f"shapes: split must be 'train' or 'test', got {split!r}")
    if resolution < 8:
        raise InputError(f"shapes: resolution must be >= 8, got {resolution}")
    chunks = [_render_shapes_chunk(seed, _SHAPES_STREAM[split], c, resolution)
              for c in range(math.ceil(n / _SHAPES_CHUNK))]
    u8 = torch.from_numpy(np.concatenate([img for img, _ in chunks])[:n])
    attributes = {key: torch.from_numpy(np.concatenate([attr[key] for _, attr in chunks])[:n]).long()
                  for key in ("palette", "background")}
    labels = torch.arange(n, dtype=torch.int64) % len(SHAPES_CLASSES)
    return ImageDataset("shapes", uint8_to_unit(u8), labels, len(SHAPES_CLASSES), list(SHAPES_CLASSES),
                        f"skiptune shapes seed={seed} split={split} n={n} resolution={resolution}", attributes)


def _render_shapes_chunk(seed: int, stream: int, chunk: int, res: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    m = _SHAPES_CHUNK
    rng = np.random.default_rng([seed, stream, chunk])
    u = rng.random((m, 12), dtype=np.float64)
    jitter = rng.normal(0.0, 0.04, size=(m, 3, 3)).astype(np.float32)
    grain = (rng.random((m, 3, res, res), dtype=np.float32) - 0.5) * 0.07  # uniform, std 0.07/sqrt(12) = 0.02
    cls = (chunk * m + np.arange(m)) % len(SHAPES_CLASSES)

    # Colours: palette p, foreground / background / second background indices (fg != bg).
    i_pal = (u[:, 0] * len(SHAPES_PALETTES)).astype(int)
    pal = SHAPES_PALETTES[i_pal]
    k = pal.shape[1]
    i_fg = (u[:, 1] * k).astype(int)
    i_bg = (i_fg + 1 + (u[:, 2] * (k - 1)).astype(int)) % k
    i_bg2 = (u[:, 3] * k).astype(int)
    rows = np.arange(m)
    fg, bg, bg2 = (np.clip(pal[rows, i] + jitter[:, j], 0, 1) for j, i in enumerate((i_fg, i_bg, i_bg2)))

    # Pixel centres in pixel units; geometry scaled with the resolution.
    c = np.arange(res, dtype=np.float32) + 0.5
    py, px = np.meshgrid(c, c, indexing="ij")
    px, py = px[None], py[None]
    r = (0.18 + 0.18 * u[:, 4]) * res
    cx = r + (res - 2 * r) * u[:, 5]
    cy = r + (res - 2 * r) * u[:, 6]
    theta = 2 * math.pi * u[:, 7]
    col = lambda a: a.astype(np.float32)[:, None, None]  # noqa: E731 (per-image scalar -> [m, 1, 1])
    dx, dy = px - col(cx), py - col(cy)
    cos, sin = col(np.cos(theta)), col(np.sin(theta))
    qx, qy = cos * dx + sin * dy, -sin * dx + cos * dy  # rotated into the shape's frame
    rr = col(r)
    sdf = np.empty((m, res, res), dtype=np.float32)
    for kind in range(len(SHAPES_CLASSES)):
        s = cls == kind
        sdf[s] = _shape_sdf(kind, dx[s], dy[s], qx[s], qy[s], rr[s])
    cover = np.clip(0.5 - sdf, 0, 1)[:, None]

    # Background: 0 flat, 1 linear gradient bg -> bg2, 2 stripes (25 % of the way to bg2).
    phi = 2 * math.pi * u[:, 8]
    along = (col(np.cos(phi)) * (px - res / 2) + col(np.sin(phi)) * (py - res / 2)) / res + 0.5
    kind_bg = (u[:, 9] * len(SHAPES_BACKGROUNDS)).astype(int)
    freq = 2 * math.pi * (2 + 3 * u[:, 10])
    t = np.where(col(kind_bg) == 0, 0.0,
                 np.where(col(kind_bg) == 1, np.clip(along, 0, 1), 0.125 * (1 + np.sin(col(freq) * along))))
    t = t[:, None].astype(np.float32)
    back = bg[:, :, None, None] * (1 - t) + bg2[:, :, None, None] * t
    psi = 2 * math.pi * u[:, 11]
    shade = 1 + 0.15 * (col(np.cos(psi)) * dx + col(np.sin(psi)) * dy) / rr  # light from direction psi
    front = np.clip(fg[:, :, None, None] * shade[:, None], 0, 1)
    img = back * (1 - cover) + front * cover + grain
    return np.floor(np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), {"palette": i_pal, "background": kind_bg}


def _shape_sdf(kind: int, dx: np.ndarray, dy: np.ndarray, qx: np.ndarray, qy: np.ndarray,
               r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) to shape ``kind`` of size ``r``; ``q`` is the rotated offset."""
    if kind == 0:  # disc of radius r
        return np.sqrt(dx**2 + dy**2) - r
    if kind == 1:  # ring: half-width 0.22 r around radius 0.75 r
        return np.abs(np.sqrt(dx**2 + dy**2) - 0.75 * r) - 0.22 * r
    if kind == 2:  # square of half-side 0.75 r (Chebyshev distance, exact along the edges)
        return np.maximum(np.abs(qx), np.abs(qy)) - 0.75 * r
    if kind == 3:  # equilateral triangle of circumradius r: the largest of three edge distances, inradius r/2
        normals = (np.pi / 2, np.pi * 7 / 6, np.pi * 11 / 6)
        return np.maximum.reduce([np.cos(a) * qx + np.sin(a) * qy for a in normals]) - 0.5 * r
    # plus-shaped cross: the union of two bars of half-length r and half-width 0.3 r
    return np.minimum(np.maximum(np.abs(qx) - r, np.abs(qy) - 0.3 * r),
                      np.maximum(np.abs(qy) - r, np.abs(qx) - 0.3 * r))


# ---------------------------------------------------------------------------------------------- files

def square_resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Centre-crop ``[N, C, H, W]`` images to a square, then resize to ``resolution`` (bilinear, antialiased)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[..., top:top + s, left:left + s]
    if s == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def load_image_folder(path: str | os.PathLike, resolution: int | None = None,
                      channels: int | None = None) -> ImageDataset:
    """PNG/JPEG images under ``path`` (recursive, sorted by relative path) as an :class:`ImageDataset`.

    ``channels`` 1 or 3 forces grayscale/RGB; by default 1 if every image is grayscale (mode L/1),
    else 3. Alpha is dropped. Without ``resolution`` every image must be square and of one size; with
    it, each image is centre-cropped to a square and resized (:func:`square_resize`). When every
    image lies in a first-level sub-folder, the sorted sub-folder names are the classes.
    """
    from skiptune.metrics.images import decode_image

    root = Path(path)
    files = sorted((p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise InputError(f"no PNG/JPEG images found under {root}")
    if channels not in (None, 1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels}")
    pics = [decode_image(f) for f in files]  # an undecodable file is an error naming it and what is wrong
    if channels is None:
        channels = 1 if all(im.mode in ("L", "1") for im in pics) else 3
    tensors = []
    for f, im in zip(files, pics, strict=True):
        arr = np.array(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        x = uint8_to_unit(torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1)).permute(2, 0, 1))[None]
        if resolution is not None:
            x = square_resize(x, resolution)
        elif x.shape[-1] != x.shape[-2] or (tensors and x.shape != tensors[0].shape):
            first = tuple(tensors[0].shape[-2:]) if tensors else None
            raise InputError(f"{f}: size {tuple(x.shape[-2:])} (first image: {first}); images must be square and "
                             "of one size, or pass a resolution to centre-crop and resize them")
        tensors.append(x)
    images = torch.cat(tensors).clamp(-1, 1).contiguous()
    parts = [f.relative_to(root).parts for f in files]
    labels, names = None, []
    if all(len(p) >= 2 for p in parts):
        names = sorted({p[0] for p in parts})
        labels = torch.tensor([names.index(p[0]) for p in parts], dtype=torch.int64)
    return ImageDataset(root.name or str(root), images, labels, len(names), names, f"folder {root}")


def load_npz(path: str | os.PathLike, resolution: int | None = None) -> ImageDataset:
    """Images from an ``.npz`` file: key ``images`` (or ``arr_0``), optional integer ``labels``.

    Arrays are ``[N, H, W, C]`` or ``[N, C, H, W]`` with C in {1, 3} (or ``[N, H, W]`` for grayscale).
    The layout is found from where the axis of size 1 or 3 is; when both fit, uint8 arrays are taken as
    NHWC and float arrays as NCHW. uint8 maps by ``u / 127.5 - 1``; floats must already be in [-1, 1].
    """
    from skiptune.metrics.stats import read_npz

    path = Path(path)
    data = read_npz(path, what="an .npz of images", keys=("images", "arr_0", "labels"))  # errors name the file
    key = next((k for k in ("images", "arr_0") if k in data), None)
    if key is None:
        raise InputError(f"{path}: no 'images' or 'arr_0' array (keys: {sorted(data.files)})")
    arr = data[key]
    labels = data.get("labels")
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise InputError(f"{path}: images must be a non-empty 4-D array, got shape {arr.shape}")
    nchw, nhwc = arr.shape[1] in (1, 3), arr.shape[3] in (1, 3)
    if not (nchw or nhwc):
        raise InputError(f"{path}: no channel axis of size 1 or 3 in shape {arr.shape}")
    if nhwc and (not nchw or arr.dtype == np.uint8):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.dtype == np.uint8:
        x = uint8_to_unit(torch.from_numpy(np.ascontiguousarray(arr)))
    elif np.issubdtype(arr.dtype, np.floating):
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1 - 1e-4 or hi > 1 + 1e-4:
            raise InputError(f"{path}: float images must lie in [-1, 1], found [{lo:.4g}, {hi:.4g}] "
                             "(store uint8 0..255, or map floats with 2 x - 1 from [0, 1])")
        x = x.clamp(-1, 1)
    else:
        raise InputError(f"{path}: images must be uint8 or float, got {arr.dtype}")
    if resolution is not None:
        x = square_resize(x, resolution)
    elif x.shape[-1] != x.shape[-2]:
        raise InputError(f"{path}: images are {x.shape[-2]}x{x.shape[-1]}; pass a resolution to crop and resize")
    lab, num = None, 0
    if labels is not None:
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (x.shape[0],):
            raise InputError(f"{path}: 'labels' must be {x.shape[0]} integers, got {labels.dtype} {labels.shape}")
        lab = torch.from_numpy(labels.astype(np.int64))
        num = int(lab.max()) + 1
    return ImageDataset(path.stem, x.contiguous(), lab, num, [str(c) for c in range(num)], f"npz {path}")


# ---------------------------------------------------------------------------------------------- dispatch

def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")


def data_option_checks(spec: str | os.PathLike, resolution: int | None, size: int | None,
                       seed: int = 0) -> list[tuple[bool, str]]:
    """``(ok, message)`` for the options of :func:`load_dataset` that must not be silently ignored: a
    ``resolution`` or ``size`` below 1, and a ``size`` or non-zero ``seed`` for data other than ``shapes``
    (only the generated set has a size and a seed)."""
    shapes = str(spec) == "shapes"
    return [
        (resolution is None or (_is_int(resolution) and resolution >= 1),
         f"resolution must be an integer >= 1 (pixels), got {resolution!r}"),
        (size is None or (_is_int(size) and size >= 1), f"data_size must be an integer >= 1 (images), got {size!r}"),
        (size is None or shapes, f"data_size applies only to the generated 'shapes' data, not to {str(spec)!r} "
                                 f"(which has a fixed number of images); drop it (got {size})"),
        (seed == 0 or shapes, f"data_seed applies only to the generated 'shapes' data, not to {str(spec)!r}; "
                              f"drop it (got {seed})"),
    ]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def load_dataset(spec: str | os.PathLike, split: str = "train", *, resolution: int | None = None,
                 size: int | None = None, seed: int = 0, channels: int | None = None) -> ImageDataset:
    """Load ``'digits'``, ``'shapes'``, an image folder or an ``.npz`` file as an :class:`ImageDataset`.

    ``resolution`` resizes (digits: the upsampling target, default 16; shapes: the canvas, default 32;
    files: centre-crop and resize). ``size`` and ``seed`` apply to ``shapes`` (default sizes
    10000 train / 2000 test) and are refused for other data, as are a ``resolution`` or ``size``
    below 1 (:func:`data_option_checks`). ``channels`` forces 1 or 3 for folders. Files have no
    held-out split.
    """
    _check_split(split)
    for ok, message in data_option_checks(spec, resolution, size, seed):
        if not ok:
            raise InputError(message)
    text = str(spec)
    if text == "digits":
        return load_digits_dataset(split, 16 if resolution is None else resolution)
    if text == "shapes":
        if split == "all":
            raise InputError("shapes: split must be 'train' or 'test'")
        return make_shapes(SHAPES_SIZES[split] if size is None else size, seed,
                           32 if resolution is None else resolution, split)
    path = Path(text)
    if not path.exists():
        raise MissingFileError(f"data set {text!r}: not 'digits' or 'shapes', and no such folder or .npz file")
    if split == "test":
        raise InputError(f"{path}: image folders and .npz files have no built-in held-out split; "
                         "load the held-out images from their own folder or file with split='train'")
    if path.is_dir():
        return load_image_folder(path, resolution, channels)
    if path.suffix.lower() == ".npz":
        return load_npz(path, resolution)
    raise InputError(f"{path}: unsupported data file; expected a folder of PNG/JPEG images or an .npz file")

