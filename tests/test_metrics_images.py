"""Image inputs: validation with clear errors, quantisation policy, folders and .npz files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from skiptune.metrics import ImageFormatError, open_images, to_uint8_nchw


def test_uint8_nhwc_and_nchw_agree() -> None:
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 6, 3), dtype=np.uint8)
    a = to_uint8_nchw(x)
    b = to_uint8_nchw(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert a.shape == (4, 3, 8, 6) and a.dtype == torch.uint8
    assert torch.equal(a, b)


def test_float_quantisation_matches_png_rounding() -> None:
    # [0, 1]: u = floor(255 x + 0.5); [-1, 1]: u = floor(127.5 x + 128), EDM's rule.
    x = torch.tensor([0.0, 0.5, 1.0, 1.0 / 255, 0.999]).view(1, 1, 1, 5)
    assert to_uint8_nchw(x)[0, 0, 0].tolist() == [0, 128, 255, 1, 255]
    y = torch.tensor([-1.0, 0.0, 1.0, -1.05, 1.05]).view(1, 1, 1, 5)  # within 10 %: clipped
    assert to_uint8_nchw(y, value_range=(-1, 1))[0, 0, 0].tolist() == [0, 128, 255, 0, 255]


def test_grayscale_is_repeated_to_rgb() -> None:
    x = torch.arange(6, dtype=torch.uint8).view(1, 1, 2, 3)
    out = to_uint8_nchw(x)
    assert out.shape == (1, 3, 2, 3) and all(torch.equal(out[0, c], x[0, 0]) for c in range(3))


def test_bad_range_is_explained() -> None:
    x = torch.rand(2, 3, 4, 4) * 255
    with pytest.raises(ImageFormatError, match=r"outside value_range=\(0, 1\).*value_range=\(0, 255\)"):
        to_uint8_nchw(x)
    with pytest.raises(ImageFormatError, match=r"value_range=\(-1, 1\)"):
        to_uint8_nchw(torch.rand(2, 3, 4, 4) * 2 - 1)
    with pytest.raises(ImageFormatError, match="outside 0..255"):
        to_uint8_nchw(np.full((1, 3, 2, 2), 300, dtype=np.int32))


def test_nan_and_shape_errors() -> None:
    x = torch.zeros(2, 3, 4, 4)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(ImageFormatError, match="1 NaN/inf"):
        to_uint8_nchw(x)
    with pytest.raises(ImageFormatError, match="4-D batch"):
        to_uint8_nchw(torch.zeros(3, 4, 4))
    with pytest.raises(ImageFormatError, match="channel axis of size 1 or 3"):
        to_uint8_nchw(torch.zeros(2, 4, 5, 5))
    with pytest.raises(ImageFormatError, match="empty"):
        to_uint8_nchw(torch.zeros(0, 3, 4, 4))


def _write(path, arr: np.ndarray, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=None if mode == "RGB" else mode).save(path)


def test_folder_is_read_sorted_and_batched(tmp_path) -> None:
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    names = ["b.png", "a.png", "sub/c.png", "d.PNG", "e.png"]
    for name, im in zip(names, imgs, strict=True):
        _write(tmp_path / name, im)
    (tmp_path / "notes.txt").write_text("ignored")
    src = open_images(tmp_path)
    assert src.num_images == 5 and src.image_size == (6, 7)
    got = torch.cat(list(src.batches(2)))
    order = sorted(range(5), key=lambda i: names[i])  # sorted relative paths: a, b, d, e, sub/c
    assert torch.equal(got, torch.from_numpy(imgs[order]).permute(0, 3, 1, 2))


def test_folder_with_mixed_sizes_is_refused(tmp_path) -> None:
    _write(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    _write(tmp_path / "b.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(ImageFormatError, match="all images of a set must have one size"):
        list(open_images(tmp_path).batches(8))


def test_empty_folder_and_missing_path(tmp_path) -> None:
    with pytest.raises(ImageFormatError, match="no PNG/JPEG images"):
        open_images(tmp_path)
    with pytest.raises(FileNotFoundError):
        open_images(tmp_path / "nope.npz")


def test_npz_images_and_stats_files(tmp_path) -> None:
    x = np.random.default_rng(2).integers(0, 256, (3, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x)  # arr_0
    np.savez(tmp_path / "b.npz", images=x)
    assert torch.equal(open_images(tmp_path / "a.npz")._array, open_images(tmp_path / "b.npz")._array)
    np.savez(tmp_path / "s.npz", mu=np.zeros(2), sigma=np.eye(2))
    with pytest.raises(ImageFormatError, match="statistics"):
        open_images(tmp_path / "s.npz")
    np.savez(tmp_path / "c.npz", pics=x)
    with pytest.raises(ImageFormatError, match="no 'images' or 'arr_0'"):
        open_images(tmp_path / "c.npz")


def test_alpha_is_dropped_only_when_opaque(tmp_path) -> None:
    rgba = np.full((3, 3, 4), 255, np.uint8)
    rgba[..., 0] = 7
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    got = next(open_images(tmp_path).batches(4))
    assert got.shape == (1, 3, 3, 3) and int(got[0, 0, 0, 0]) == 7
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba).save(tmp_path / "see-through.png")
    with pytest.raises(ImageFormatError, match="transparent alpha"):
        list(open_images(tmp_path).batches(4))
