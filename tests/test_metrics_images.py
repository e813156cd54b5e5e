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


# -- files that are not what their name says: one decoder, one clear error -------------------------------------------

def _bad_png_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)).save(good)
    return {
        "text": (b"just some text\n", "not an image file: it is a text file (it starts with 'just some text')"),
        "empty": (b"", "an empty file (0 bytes)"),
        "html": (b"<html><body>Forbidden</body></html>", "an HTML page"),
        "truncated": (good.read_bytes()[:150], "truncated or corrupt image data"),
        "zip": (b"PK\x03\x04" + bytes(40), "a ZIP archive"),
    }


@pytest.mark.parametrize("kind", ["text", "empty", "html", "truncated", "zip"])
def test_a_file_named_png_that_is_no_image_is_named_with_what_it_is(tmp_path, kind) -> None:
    from skiptune.metrics.images import decode_image
    from skiptune.train.data import load_image_folder

    content, says = _bad_png_files(tmp_path)[kind]
    folder = tmp_path / "set"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "a.png")
    (folder / "b.png").write_bytes(content)
    with pytest.raises(ImageFormatError) as direct:
        decode_image(folder / "b.png")
    assert str(folder / "b.png") in str(direct.value) and says in str(direct.value)
    with pytest.raises(ImageFormatError) as metrics:
        list(open_images(folder).batches(8))
    with pytest.raises(ImageFormatError) as training:  # the training loader decodes through the same function
        load_image_folder(folder)
    assert str(metrics.value) == str(training.value) == str(direct.value)


def test_a_jpeg_named_png_is_still_an_image(tmp_path) -> None:
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "x.png", format="JPEG")
    assert next(open_images(tmp_path).batches(1)).shape == (1, 3, 4, 4)


def test_array_files_that_are_not_arrays(tmp_path) -> None:
    (tmp_path / "t.npz").write_text("hello\n")
    with pytest.raises(ImageFormatError, match=r"t\.npz is not an \.npz of images: it is a text file") as e:
        open_images(tmp_path / "t.npz")
    assert "allow_pickle" not in str(e.value)
    (tmp_path / "t.npy").write_text("hello\n")
    with pytest.raises(ImageFormatError, match=r"t\.npy is not a NumPy \.npy array: it is a text file"):
        open_images(tmp_path / "t.npy")
    np.savez(tmp_path / "obj.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ImageFormatError, match="Python objects"):
        open_images(tmp_path / "obj.npz")
    np.savez(tmp_path / "ok.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:100])
    with pytest.raises(ImageFormatError, match="damaged .npz"):
        open_images(tmp_path / "cut.npz")
