"""Backbones: map an input to a feature vector of size ``out_features``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs.

    Args:
        in_features: values in one flattened input row.
        hidden: the width of each hidden layer, in order; none: the inputs pass through, flattened.

    >>> import torch
    >>> MLP(784, (256, 256))(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 256])
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        # No hidden layer: the features pass through flattened, so the head is a linear probe.
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.net = nn.Sequential(*layers)
        self.in_features, self.hidden, self.out_features = in_features, list(hidden), width

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out

    def get_config(self) -> dict[str, Any]:
        """What rebuilds this backbone.

        Returns:
            Its ``name`` (``mlp``), ``in_features`` and ``hidden``.
        """
        return {"name": "mlp", "in_features": self.in_features, "hidden": self.hidden}


class SmallCNN(nn.Module):
    """Two conv-ReLU-pool blocks and a linear layer: a small image backbone.

    Args:
        in_channels: channels of the input images (1: grey, 3: RGB).
        image_size: side of the square input images, in pixels.
        channels: filters of the first convolution (the second has twice as many).
        out_features: width of the feature vector.

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
        out: Tensor = self.net(x)
        return out

    def get_config(self) -> dict[str, Any]:
        """What rebuilds this backbone.

        Returns:
            Its ``name`` (``cnn``) and the arguments it was built with.
        """
        return {"name": "cnn", "in_channels": self.in_channels, "image_size": self.image_size,
                "channels": self.channels, "out_features": self.out_features}



class ProgressiveMLP(nn.Module):
    """Progressive neural network columns (Rusu et al. 2016) of MLP layers.

    Each task gets its own column; layer ``l`` of column ``k`` also receives, through lateral
    linear adapters, layer ``l-1`` of every earlier column. Earlier columns are frozen when a
    new one is added, so what they compute for their tasks never changes.

    Args:
        in_features: values in one flattened input row.
        hidden: the width of each layer of a column, in order.
        tasks: task ids to build columns for at once, in order (a saved network's).
    """

    uses_task = True

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 256), tasks: Sequence[int] = ()) -> None:
        super().__init__()
        self.in_features, self.hidden, self.out_features = in_features, list(hidden), hidden[-1]
        self.columns = nn.ModuleList()
        self.laterals = nn.ModuleList()
        self.tasks: list[int] = []
        for task in tasks:
            self.add_column(int(task))

    def add_column(self, task: int) -> None:
        """A new trainable column for ``task``; every existing column is frozen.

        Args:
            task: the task id the column serves (one that has a column already: nothing changes).
        """
        if task in self.tasks:
            return
        for p in self.parameters():
            p.requires_grad_(False)
        device = next(self.parameters(), torch.empty(0)).device
        k = len(self.columns)
        widths = [self.in_features, *self.hidden]
        self.columns.append(nn.ModuleList(
            nn.Linear(widths[i], widths[i + 1], device=device) for i in range(len(self.hidden))
        ))
        # laterals[k][d-1][j]: from column j's layer d-1 output into column k's layer d
        self.laterals.append(nn.ModuleList(
            nn.ModuleList(nn.Linear(widths[d], widths[d + 1], bias=False, device=device) for _ in range(k))
            for d in range(1, len(self.hidden))
        ))
        self.tasks.append(task)

    def _column(self, x: Tensor, k: int) -> list[list[Tensor]]:
        acts: list[list[Tensor]] = []  # acts[j][d]: column j's layer-d output
        for j in range(k + 1):
            out, h = [], x
            # add_column appends a ModuleList of layers, and one of lateral ModuleLists, per column
            column, laterals = cast(nn.ModuleList, self.columns[j]), cast(nn.ModuleList, self.laterals[j])
            for depth, layer in enumerate(column):
                z = layer(h)
                if depth > 0:
                    for i, lateral in enumerate(cast(nn.ModuleList, laterals[depth - 1])):
                        z = z + lateral(acts[i][depth - 1])
                h = torch.relu(z)
                out.append(h)
            acts.append(out)
        return acts

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        x = x.flatten(1)
        if t is None:
            raise ValueError("a progressive network needs the task id of every sample")
        out = x.new_zeros((len(x), self.out_features))
        for task in torch.unique(t).tolist():
            if task not in self.tasks:
                continue
            k = self.tasks.index(task)
            features = self._column(x, k)[k][-1]
            out = torch.where((t == task).unsqueeze(1), features, out)
        return out

    def get_config(self) -> dict[str, Any]:
        """What rebuilds this backbone, its columns included.

        Returns:
            Its ``name`` (``pnn``), ``in_features``, ``hidden`` and ``tasks``.
        """
        return {"name": "pnn", "in_features": self.in_features, "hidden": self.hidden, "tasks": self.tasks}


BACKBONES = {"mlp": MLP, "cnn": SmallCNN, "pnn": ProgressiveMLP}
