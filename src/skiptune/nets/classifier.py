"""A small convolutional classifier, used as the domain feature network of the demo data.

Its penultimate activations (``features``, before the final ReLU) serve for FID-style metrics on
data where Inception-V3 (trained on 299x299 ImageNet photos) is meaningless, e.g. 16x16 digits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from skiptune.core.errors import InputError


class SmallClassifier(nn.Module):
    """conv-conv-pool-conv-conv-pool-fc(features)-fc(logits) with GroupNorm, for small images.

    Input: float images in [-1, 1], NCHW with ``in_channels`` channels, side ``resolution``
    (divisible by 4). ``forward`` returns logits; :meth:`features` returns both.
    """

    def __init__(self, in_channels: int = 1, resolution: int = 16, num_classes: int = 10, width: int = 32,
                 feature_dim: int = 64):
        super().__init__()
        if resolution % 4:
            raise InputError(f"resolution must be divisible by 4, got {resolution}")
        self.in_channels, self.resolution, self.num_classes = in_channels, resolution, num_classes
        self.width, self.feature_dim = width, feature_dim
        w = width
        self.conv0 = nn.Conv2d(in_channels, w, 3, padding=1)
        self.conv1 = nn.Conv2d(w, w, 3, padding=1)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        self.norms = nn.ModuleList([nn.GroupNorm(8, c) for c in (w, w, 2 * w, 2 * w)])
        self.fc = nn.Linear(2 * w * (resolution // 4) ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def config(self) -> dict:
        return dict(in_channels=self.in_channels, resolution=self.resolution, num_classes=self.num_classes,
                    width=self.width, feature_dim=self.feature_dim)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = x
        for i, conv in enumerate((self.conv0, self.conv1, self.conv2, self.conv3)):
            h = F.silu(self.norms[i](conv(h)))
            if i in (1, 3):
                h = F.avg_pool2d(h, 2)
        feats = self.fc(h.flatten(1))
        return {"features": feats, "logits": self.head(F.silu(feats))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["logits"]
