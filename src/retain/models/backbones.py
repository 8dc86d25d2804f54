"""Backbones: map an input to a feature vector of size ``out_features``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs.

    >>> import torch
    >>> MLP(784, (256, 256))(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 256])
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("MLP needs at least one hidden layer")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.net = nn.Sequential(*layers)
        self.in_features, self.hidden, self.out_features = in_features, list(hidden), width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def get_config(self) -> dict[str, Any]:
        return {"name": "mlp", "in_features": self.in_features, "hidden": self.hidden}


class SmallCNN(nn.Module):
    """Two conv-ReLU-pool blocks and a linear layer: a small image backbone.

    >>> import torch
    >>> SmallCNN(1, 28)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 128])
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, channels: int = 32,
                 out_features: int = 128) -> None:
        super().__init__()
        side = math.ceil(math.ceil(image_size / 2) / 2)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Flatten(), nn.Linear(2 * channels * side * side, out_features), nn.ReLU(),
        )
        self.in_channels, self.image_size = in_channels, image_size
        self.channels, self.out_features = channels, out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def get_config(self) -> dict[str, Any]:
        return {"name": "cnn", "in_channels": self.in_channels, "image_size": self.image_size,
                "channels": self.channels, "out_features": self.out_features}


BACKBONES = {"mlp": MLP, "cnn": SmallCNN}
