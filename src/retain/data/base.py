"""What every data set is: the :class:`Dataset` type, the error of a missing one, and where data is cached.

Kept apart from the registry of built-in data sets (:mod:`retain.data.datasets`), which imports
the text and audio builders: they import these, and nothing imports back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor


def cache_dir() -> Path:
    """Where retain caches generated data and features (``$RETAIN_CACHE`` or ``~/.cache/retain``).

    Returns:
        The cache folder; it may not exist yet.
    """
    return Path(os.environ.get("RETAIN_CACHE", Path.home() / ".cache" / "retain"))


class DatasetNotFound(FileNotFoundError):
    """A data set's files or package are missing; the message says what to install or pass."""


@dataclass
class Dataset:
    """A labeled data set already split into train and test; images are ``(N, C, H, W)``.

    Attributes:
        name: the data set's name (a key of ``retain.data.DATASETS`` for the built-in ones).
        x_train: training inputs, one row per sample.
        y_train: training labels, class ids ``0 .. n_classes-1``.
        x_test: test inputs.
        y_test: test labels.
        class_names: the name of each class id.
        metadata: anything else the loader knows, e.g. the speaker of every clip.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    class_names: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. the speaker of every clip

    @property
    def n_classes(self) -> int:
        """How many classes the data set has (its class names)."""
        return len(self.class_names)
