"""Domain classifiers: joint labels of the shapes, the training recipe, and classifiers as feature networks."""

from __future__ import annotations

import pytest
import torch

from skiptune.demo.assets import classifier_metadata, load_classifier
from skiptune.demo.classifier import joint_labels, train_classifier
from skiptune.metrics import get_extractor
from skiptune.train.data import SHAPES_BACKGROUNDS, SHAPES_CLASSES, SHAPES_PALETTES, make_shapes

pytest.importorskip("safetensors")


def test_joint_labels_encode_class_background_and_palette():
    ds = make_shapes(300, seed=1)
    y, n = joint_labels(ds)
    nb, npal = len(SHAPES_BACKGROUNDS), len(SHAPES_PALETTES)
    assert n == len(SHAPES_CLASSES) * nb * npal == 75
    assert int(y.min()) >= 0 and int(y.max()) < n
    # Mixed radix over (class, background, palette): decoding gives the factors back.
    assert torch.equal(y % npal, ds.attributes["palette"])
    assert torch.equal((y // npal) % nb, ds.attributes["background"])
    assert torch.equal(y // (npal * nb), ds.labels)
    odd = type(ds)("odd", ds.images, ds.labels, ds.num_classes, attributes={"size": ds.labels})
    with pytest.raises(ValueError, match="attribute 'size' has no known range"):
        joint_labels(odd)


def test_shapes_classifier_recipe_and_extractor(tmp_path):
    path = tmp_path / "shapes-classifier.safetensors"
    report = train_classifier(path, steps=3, batch=8, data="shapes", train_size=40, test_size=20, progress=False)
    assert report["num_classes"] == 75 and report["n_test"] == 20 and 0 <= report["test_class_accuracy"] <= 1
    model = load_classifier(path)
    assert (model.in_channels, model.resolution, model.num_classes) == (3, 32, 75)
    assert classifier_metadata(path)["extra"]["data"] == "shapes"

    ext = get_extractor("shapes-classifier", weights=path)
    assert ext.name == "shapes-classifier" and ext.dims == {"features": 64, "logits": 75}
    u8 = ((make_shapes(4, seed=2).images + 1) * 127.5).round().to(torch.uint8)
    feats = ext(u8, features=["features"])["features"]
    direct = model.features(u8.float() / 127.5 - 1)["features"]  # RGB at the native size: no resizing
    torch.testing.assert_close(feats, direct)
    # A gray image is repeated over the three channels; another size is resized to 32x32.
    gray = u8[:, :1]
    torch.testing.assert_close(ext(gray, features=["features"])["features"],
                               model.features(gray.float().expand(-1, 3, -1, -1) / 127.5 - 1)["features"])
    assert ext(u8[:, :, :16, :16], features=["features"])["features"].shape == (4, 64)
