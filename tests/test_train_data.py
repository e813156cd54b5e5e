"""Training data sets: shapes, ranges, the fixed digits split, shapes determinism, folder/npz round trips."""

import numpy as np
import pytest
import torch
from PIL import Image

from skiptune.train.data import (
    SHAPES_CLASSES,
    ImageDataset,
    digits_split_indices,
    load_dataset,
    load_image_folder,
    load_npz,
    make_shapes,
)

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def _bilinear_x2_matrix(n: int) -> np.ndarray:
    """Rows of 2x bilinear upsampling with align_corners=False, derived by hand.

    Output pixel o samples source coordinate (o + 1/2)/2 - 1/2 = o/2 - 1/4: o = 2k+1 gives
    k + 1/4 (weights 3/4, 1/4 on k, k+1), o = 2k+2 gives k + 3/4 (1/4, 3/4); the two border pixels
    fall outside [0, n-1] and are clamped to the edge value.
    """
    a = np.zeros((2 * n, n))
    a[0, 0] = a[2 * n - 1, n - 1] = 1
    for k in range(n - 1):
        a[2 * k + 1, k], a[2 * k + 1, k + 1] = 0.75, 0.25
        a[2 * k + 2, k], a[2 * k + 2, k + 1] = 0.25, 0.75
    return a


def test_digits_split_is_fixed_disjoint_stratified_and_complete():
    target = sklearn_datasets.load_digits().target
    split = digits_split_indices()
    train, test = split["train"], split["test"]
    assert len(train) == 1497 and len(test) == 300
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.union1d(train, test), np.arange(len(target)))
    assert np.array_equal(np.bincount(target[test], minlength=10), np.full(10, 30))
    again = digits_split_indices()
    assert np.array_equal(again["train"], train) and np.array_equal(again["test"], test)


def test_digits_images_are_the_documented_upsampling():
    raw = sklearn_datasets.load_digits()
    split = digits_split_indices()
    a = _bilinear_x2_matrix(8)
    for name, n in (("train", 1497), ("test", 300)):
        ds = load_dataset("digits", split=name)
        assert ds.images.shape == (n, 1, 16, 16) and ds.images.dtype == torch.float32
        assert ds.channels == 1 and ds.resolution == 16 and ds.num_classes == 10 and len(ds) == n
        assert np.array_equal(ds.labels.numpy(), raw.target[split[name]])
        expected = np.einsum("ij,njk,lk->nil", a, raw.images[split[name]] / 16.0, a) * 2 - 1
        np.testing.assert_allclose(ds.images[:, 0].numpy(), expected, atol=1e-6)
        # Convex combinations of 0..16 keep the range; blank pixels map to exactly -1.
        assert float(ds.images.min()) == -1.0 and float(ds.images.max()) <= 1.0


def test_shapes_are_deterministic_prefix_stable_and_well_formed():
    big = make_shapes(300, seed=3)
    assert big.images.shape == (300, 3, 32, 32) and big.images.dtype == torch.float32
    assert torch.equal(big.images, make_shapes(300, seed=3).images)
    small = make_shapes(20, seed=3)  # the chunked generator: a prefix of a larger set is the same
    assert torch.equal(small.images, big.images[:20]) and torch.equal(small.labels, big.labels[:20])
    assert not torch.equal(make_shapes(20, seed=4).images, small.images)
    assert float(big.images.min()) >= -1 and float(big.images.max()) <= 1
    u8 = (big.images + 1) * 127.5  # quantised to 8 bits: u / 127.5 - 1
    assert torch.allclose(u8, u8.round(), atol=1e-4)
    assert big.num_classes == len(SHAPES_CLASSES) == 5
    assert torch.equal(big.labels, torch.arange(300) % 5)
    assert bool((big.images.flatten(1).std(dim=1) > 0.05).all())  # every image has a shape on a background
    test = make_shapes(300, seed=3, split="test")
    same = (big.images[:, None] == test.images[None]).flatten(2).all(dim=2)
    assert not bool(same.any())  # no test image repeats a training image
    assert make_shapes(4, resolution=16).images.shape == (4, 3, 16, 16)


def test_shapes_attributes_describe_the_images():
    from skiptune.train.data import SHAPES_BACKGROUNDS, SHAPES_PALETTES

    ds = make_shapes(600, seed=5)
    pal, bg = ds.attributes["palette"], ds.attributes["background"]
    assert pal.shape == bg.shape == (600,) and torch.equal(make_shapes(40, seed=5).attributes["palette"], pal[:40])
    assert set(pal.tolist()) == set(range(len(SHAPES_PALETTES))) and set(bg.tolist()) == {0, 1, 2}
    # The four corner pixels never lie under the shape (centre >= r from each edge, shapes reach <= 1.05 r).
    corners = (ds.images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]] + 1) / 2  # [N, 3, 4] in [0, 1]
    spread = (corners.amax(dim=2) - corners.amin(dim=2)).amax(dim=1)
    flat, grad = bg == SHAPES_BACKGROUNDS.index("flat"), bg == SHAPES_BACKGROUNDS.index("gradient")
    assert float(spread[flat].max()) < 0.1 < float(spread[grad].median())  # grain only vs a colour ramp
    # A flat background is one palette colour (+ jitter): its nearest palette colour is mostly of its palette.
    colour = corners[flat].mean(dim=2)
    dist = torch.cdist(colour, torch.from_numpy(SHAPES_PALETTES).reshape(-1, 3))
    assert float(((dist.argmin(dim=1) // SHAPES_PALETTES.shape[1]) == pal[flat]).float().mean()) > 0.8
    with pytest.raises(ValueError, match="attribute 'palette'"):
        type(ds)("x", ds.images, attributes={"palette": pal[:3]})


def _save_png(x: torch.Tensor, path) -> None:
    u8 = ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(u8[..., 0] if u8.shape[2] == 1 else u8).save(path)


def test_image_folder_round_trip_with_class_folders(tmp_path):
    ds = make_shapes(10, seed=1, resolution=16)
    for i in range(10):
        folder = tmp_path / SHAPES_CLASSES[int(ds.labels[i])]
        folder.mkdir(exist_ok=True)
        _save_png(ds.images[i], folder / f"{i:03d}.png")
    back = load_dataset(tmp_path)
    # Files sort by relative path: class folder first, then index.
    order = sorted(range(10), key=lambda i: (SHAPES_CLASSES[int(ds.labels[i])], i))
    assert torch.equal(back.images, ds.images[order])
    assert back.class_names == sorted(SHAPES_CLASSES)
    assert [back.class_names[int(c)] for c in back.labels] == [SHAPES_CLASSES[int(ds.labels[i])] for i in order]


def test_image_folder_grayscale_resize_and_errors(tmp_path):
    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 20), 40 * i, dtype=np.uint8)).save(gray / f"{i}.png")
    ds = load_image_folder(gray, resolution=8)
    assert ds.images.shape == (3, 1, 8, 8) and ds.labels is None
    np.testing.assert_allclose(ds.images[:, 0, 0, 0].numpy(), [40 * i / 127.5 - 1 for i in range(3)], atol=1e-6)
    assert load_image_folder(gray, resolution=8, channels=3).images.shape == (3, 3, 8, 8)
    with pytest.raises(ValueError, match="must be square"):
        load_image_folder(gray)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG/JPEG"):
        load_image_folder(tmp_path / "empty")


def test_npz_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2, 0])
    np.savez(tmp_path / "a.npz", images=u8, labels=labels)
    ds = load_npz(tmp_path / "a.npz")
    assert ds.images.shape == (5, 3, 8, 8) and ds.num_classes == 3
    assert torch.equal(ds.images, torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert torch.equal(ds.labels, torch.from_numpy(labels))
    floats = ds.images.numpy()
    np.savez(tmp_path / "b.npz", floats)  # stored as arr_0, NCHW float in [-1, 1]
    assert torch.equal(load_dataset(tmp_path / "b.npz").images, ds.images)
    np.savez(tmp_path / "c.npz", images=floats * 2)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        load_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", pictures=u8)
    with pytest.raises(ValueError, match="no 'images' or 'arr_0'"):
        load_npz(tmp_path / "d.npz")
    assert load_npz(tmp_path / "a.npz", resolution=4).images.shape == (5, 3, 4, 4)


def test_load_dataset_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not 'digits' or 'shapes'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="split must be"):
        load_dataset("digits", split="validation")
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 4, 4, 1), np.uint8))
    with pytest.raises(ValueError, match="no built-in held-out split"):
        load_dataset(tmp_path / "a.npz", split="test")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported data file"):
        load_dataset(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="labels must lie"):
        ImageDataset("bad", torch.zeros(2, 1, 4, 4), torch.tensor([0, 3]), 3)


def test_options_that_would_be_ignored_are_refused():
    """size/seed shape only the generated shapes; sizes below 1 used to fall back to the defaults silently."""
    for spec, kwargs, match in (
        ("digits", {"size": 100}, "data_size applies only to the generated 'shapes'"),
        ("digits", {"seed": 3}, "data_seed applies only"),
        ("digits", {"resolution": 0}, "resolution must be an integer >= 1"),
        ("digits", {"resolution": -8}, "resolution must be"),
        ("shapes", {"size": 0}, "data_size must be an integer >= 1"),
        ("shapes", {"resolution": 0}, "resolution must be"),
    ):
        with pytest.raises(ValueError, match=match):
            load_dataset(spec, "train", **kwargs)
    small = load_dataset("shapes", "test", size=7, seed=1, resolution=8)
    assert len(small) == 7 and small.resolution == 8 and "seed=1" in small.source
    assert load_dataset("digits", "test", resolution=4).resolution == 4


def test_head_takes_the_first_images_or_refuses():
    ds = make_shapes(9, resolution=8)
    head = ds.head(4, what="--n")
    assert len(head) == 4 and torch.equal(head.images, ds.images[:4]) and torch.equal(head.labels, ds.labels[:4])
    assert all(torch.equal(head.attributes[k], v[:4]) for k, v in ds.attributes.items())
    assert head.num_classes == ds.num_classes and "first 4" in head.source
    assert ds.head(None) is ds and len(ds.head(9)) == 9
    with pytest.raises(ValueError, match="--n 10: shapes has only 9 images .*use --n 9 or fewer"):
        ds.head(10, what="--n")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            ds.head(bad)
