"""Experiences (one chunk of labeled data with its test split) and streams of them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def _labels(y: Tensor) -> list[int]:
    """The class ids ``y`` labels: its values, or for a detector's packed boxes ``[N, M, 5]`` the first field of
    each box row that is not padding (a negative id)."""
    if y.dim() == 3:
        ids = y[..., 0]
        return [int(c) for c in torch.unique(ids[ids >= 0]).tolist()]
    return y.tolist()


@dataclass
class Experience:
    """One chunk of labeled data that arrives at once, with the test split that judges it.

    Labels are global class ids (``0 .. n_classes-1`` of the stream); ``task`` is the task
    id used by per-task heads; ``id`` is the position in the stream.

    Attributes:
        x_train: training inputs, one row per sample.
        y_train: training labels (global class ids; a detector's packed boxes ``[N, M, 5]``).
        x_test: test inputs, the split that judges the experience.
        y_test: test labels.
        id: position in the stream, from 0.
        task: task id of every sample unless ``t_train`` / ``t_test`` give one per sample.
        classes: the class ids the experience holds; empty: found from the labels.
        metadata: anything else known about the experience (its source file, original classes).
        t_train: task id of each training sample; None: ``task`` for all.
        t_test: task id of each test sample; None: ``task`` for all.
        scenario: the kind of stream it belongs to (``class_incremental``, ``task_incremental`` or
            ``domain_incremental``).

    Raises:
        ValueError: when a split's inputs and labels differ in length.

    >>> x = torch.zeros(4, 2)
    >>> exp = Experience(x, torch.tensor([0, 1, 0, 1]), x[:2], torch.tensor([0, 1]), id=0)
    >>> exp.classes, exp.n_train, exp.n_test
    ((0, 1), 4, 2)
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    id: int = 0
    task: int = 0
    classes: tuple[int, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    t_train: Tensor | None = None
    t_test: Tensor | None = None
    scenario: str = "class_incremental"

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if len(x) != len(y):
                raise ValueError(
                    f"experience {self.id}: x_{split} has {len(x)} rows but y_{split} has {len(y)}"
                )
        if not self.classes:
            self.classes = tuple(sorted(set(_labels(self.y_train)) | set(_labels(self.y_test))))

    @property
    def n_train(self) -> int:
        """Training samples."""
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        """Test samples."""
        return len(self.y_test)

    def train_tasks(self) -> Tensor:
        """Task id of every training sample.

        Returns:
            ``t_train``, or ``task`` repeated ``n_train`` times (int64).
        """
        if self.t_train is not None:
            return self.t_train
        return torch.full((self.n_train,), self.task, dtype=torch.long)

    def test_tasks(self) -> Tensor:
        """Task id of every test sample.

        Returns:
            ``t_test``, or ``task`` repeated ``n_test`` times (int64).
        """
        if self.t_test is not None:
            return self.t_test
        return torch.full((self.n_test,), self.task, dtype=torch.long)


@dataclass
class Stream:
    """An ordered sequence of experiences from one scenario.

    Attributes:
        experiences: the experiences, in the order they arrive.
        n_classes: classes over the whole stream (labels are ``0 .. n_classes-1``).
        name: a name for reports, e.g. ``split_digits``.
        scenario: ``class_incremental``, ``task_incremental`` or ``domain_incremental``.
        class_names: the name of each class id; empty when the data named none.
        metadata: how the stream was built (class order, transform, new classes per experience).

    >>> x = torch.zeros(2, 3)
    >>> s = Stream([Experience(x, torch.tensor([0, 1]), x, torch.tensor([0, 1]))], n_classes=2)
    >>> len(s), s[0].classes
    (1, (0, 1))
    """

    experiences: list[Experience]
    n_classes: int
    name: str = "stream"
    scenario: str = "class_incremental"
    class_names: Sequence[str] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.experiences)

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.experiences)

    def __getitem__(self, i: int) -> Experience:
        return self.experiences[i]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input row (the first experience's)."""
        return tuple(self.experiences[0].x_train.shape[1:])

    def merged(self) -> Experience:
        """All experiences as one (the data a Joint upper bound trains on).

        Returns:
            One experience holding every experience's train and test rows, in stream order, with
            each row's task id.
        """
        exps = self.experiences
        return Experience(
            torch.cat([e.x_train for e in exps]),
            torch.cat([e.y_train for e in exps]),
            torch.cat([e.x_test for e in exps]),
            torch.cat([e.y_test for e in exps]),
            id=0,
            task=exps[0].task,
            classes=tuple(sorted({c for e in exps for c in e.classes})),
            metadata={"merged_from": [e.id for e in exps]},
            t_train=torch.cat([e.train_tasks() for e in exps]),
            t_test=torch.cat([e.test_tasks() for e in exps]),
            scenario=exps[0].scenario,
        )


def split_held_out(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Row indices to train on and to hold out: ``fraction`` of each class held out (at least one
    row of a class with two or more), chosen with ``seed``.

    Args:
        y: the labels of the rows to split.
        fraction: share of each class to hold out, 0-1.
        seed: seed of the random choice.

    Returns:
        The indices to train on and those held out, each sorted.

    >>> train, held = split_held_out(torch.tensor([0, 0, 0, 0, 1, 1]), 0.25, 0)
    >>> sorted(held.tolist()) in ([0, 4], [1, 4], [2, 4], [3, 4], [0, 5], [1, 5], [2, 5], [3, 5]), len(train)
    (True, 4)
    """
    g = torch.Generator().manual_seed(seed)
    held = []
    for c in torch.unique(y):
        rows = (y == c).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=g)]
        n = max(1, round(fraction * len(rows))) if len(rows) > 1 else 0
        held.append(rows[:n])
    held_out = torch.cat(held).sort().values
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[held_out] = False
    return keep.nonzero().squeeze(1), held_out
