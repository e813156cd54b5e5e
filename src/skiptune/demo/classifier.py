"""Recipe for the digits classifier: the domain feature network of the demo metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from skiptune.nets.classifier import SmallClassifier


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1 pixel (edge padding) and mild Gaussian pixel noise."""
    n = x.shape[0]
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dx = torch.randint(0, 3, (n,), generator=g)
    dy = torch.randint(0, 3, (n,), generator=g)
    r = x.shape[-1]
    out = torch.stack([pad[i, :, dy[i]:dy[i] + r, dx[i]:dx[i] + r] for i in range(n)])
    return out + 0.05 * torch.randn(out.shape, generator=g)


def accuracy(model: SmallClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def train_classifier(out: str | Path, steps: int = 3000, batch: int = 128, lr: float = 2e-3, seed: int = 0,
                     progress: bool = True) -> dict:
    """Train :class:`SmallClassifier` on the digits train split; report held-out accuracy; save it."""
    from skiptune.demo.assets import save_classifier
    from skiptune.train.data import load_dataset

    torch.manual_seed(seed)
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    model = SmallClassifier(in_channels=train.channels, resolution=train.resolution, num_classes=train.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    log = []
    for step in tqdm(range(steps), disable=not progress, desc="classifier"):
        idx = torch.randint(0, len(train), (batch,), generator=g)
        x = _augment(train.images[idx], g)
        loss = F.cross_entropy(model(x), train.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log.append({"step": step, "loss": loss.item()})
    model.eval()
    report = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
              "train_accuracy": accuracy(model, train.images, train.labels),
              "test_accuracy": accuracy(model, test.images, test.labels), "n_test": len(test)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_classifier(model, out, extra=report)
    out.with_suffix(".log.json").write_text(json.dumps({"report": report, "log": log}, indent=2) + "\n")
    return report
