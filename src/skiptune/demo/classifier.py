"""Recipe for the domain classifiers: the feature networks of the demo metrics (digits, shapes).

A data set with per-image ``attributes`` (shapes: palette and background) is classified on the
joint label ``class x attribute x ...``, so that the penultimate features, and the FID computed on
them, see colour and background as well as the shape class.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from skiptune.core.errors import InputError
from skiptune.nets.classifier import SmallClassifier
from skiptune.train.data import SHAPES_BACKGROUNDS, SHAPES_PALETTES

_ATTRIBUTE_RANGES = {"palette": len(SHAPES_PALETTES), "background": len(SHAPES_BACKGROUNDS)}


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1 pixel (edge padding) and mild Gaussian pixel noise."""
    n = x.shape[0]
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dx = torch.randint(0, 3, (n,), generator=g)
    dy = torch.randint(0, 3, (n,), generator=g)
    r = x.shape[-1]
    out = torch.stack([pad[i, :, dy[i]:dy[i] + r, dx[i]:dx[i] + r] for i in range(n)])
    return out + 0.05 * torch.randn(out.shape, generator=g)


def joint_labels(data) -> tuple[torch.Tensor, int]:
    """The class label combined with every attribute (mixed radix, in key order) and its range."""
    labels, n = data.labels, data.num_classes
    for key in sorted(data.attributes):
        if key not in _ATTRIBUTE_RANGES:
            raise InputError(f"{data.name}: attribute {key!r} has no known range; known: {sorted(_ATTRIBUTE_RANGES)}")
        k = _ATTRIBUTE_RANGES[key]
        labels, n = labels * k + data.attributes[key], n * k
    return labels, n


def predict(model: SmallClassifier, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images).argmax(1)


def accuracy(model: SmallClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, images) == labels).float().mean())


def train_classifier(out: str | Path, steps: int = 3000, batch: int = 128, lr: float = 2e-3, seed: int = 0,
                     progress: bool = True, data: str = "digits", train_size: int | None = None,
                     test_size: int | None = None) -> dict:
    """Train :class:`SmallClassifier` on the train split of ``data``; report held-out accuracy; save it.

    ``train_size`` / ``test_size`` set the size of procedurally generated sets (shapes).
    """
    from skiptune.demo.assets import save_classifier
    from skiptune.train.data import load_dataset

    torch.manual_seed(seed)
    train = load_dataset(data, split="train", size=train_size)
    test = load_dataset(data, split="test", size=test_size)
    y_train, num_classes = joint_labels(train)
    y_test, _ = joint_labels(test)
    model = SmallClassifier(in_channels=train.channels, resolution=train.resolution, num_classes=num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    log = []
    for step in tqdm(range(steps), disable=not progress, desc="classifier"):
        idx = torch.randint(0, len(train), (batch,), generator=g)
        x = _augment(train.images[idx], g)
        loss = F.cross_entropy(model(x), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log.append({"step": step, "loss": loss.item()})
    model.eval()
    pred = predict(model, test.images)
    report = {"data": data, "steps": steps, "batch": batch, "lr": lr, "seed": seed, "num_classes": num_classes,
              "seconds": round(time.perf_counter() - t0, 1),
              "train_accuracy": accuracy(model, train.images, y_train),
              "test_accuracy": float((pred == y_test).float().mean()), "n_test": len(test)}
    if train.attributes:  # also the accuracy on the class alone (the joint label's leading digit)
        per_class = num_classes // train.num_classes
        report["test_class_accuracy"] = float((pred // per_class == test.labels).float().mean())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_classifier(model, out, extra=report)
    out.with_suffix(".log.json").write_text(json.dumps({"report": report, "log": log}, indent=2) + "\n")
    return report
