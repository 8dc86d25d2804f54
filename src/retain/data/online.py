"""Online streams: a stream of experiences cut into small incoming batches, seen once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from retain.data.experience import Stream


@dataclass
class OnlineBatch:
    """One incoming mini-batch: inputs, labels, task ids, and the experience it came from.

    Attributes:
        x: the inputs, one row per sample.
        y: the labels.
        t: the task id of each sample.
        experience: the id of the experience each sample came from.
    """

    x: Tensor
    y: Tensor
    t: Tensor
    experience: Tensor


class OnlineStream:
    """The training samples of ``stream`` in one pass of ``batch_size`` batches.

    Samples keep the order of experiences (no task boundary is announced); ``shuffle`` mixes
    samples within each experience; ``blurry`` (0 to 0.5) shuffles a window of that fraction
    of an experience's size around each boundary, so neighbouring experiences' classes mix.

    Args:
        stream: the experiences whose training samples arrive.
        batch_size: samples per incoming batch, at least 1 (the last batch may be smaller).
        shuffle: mix the samples within each experience; False keeps their order.
        blurry: share of an experience's size, 0 to 0.5, shuffled across each boundary; 0: sharp boundaries.
        seed: seed of the shuffles.

    Raises:
        ValueError: when ``batch_size`` is below 1 or ``blurry`` outside 0 to 0.5.

    >>> from retain.data import class_incremental, load_dataset
    >>> online = OnlineStream(class_incremental(load_dataset("digits"), 5), batch_size=10)
    >>> len(online), online.n_samples, online.boundaries[:2]
    (126, 1257, [251, 503])
    """

    def __init__(self, stream: Stream, batch_size: int = 10, shuffle: bool = True, blurry: float = 0.0,
                 seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= blurry <= 0.5:
            raise ValueError(f"blurry must be between 0 and 0.5, got {blurry}")
        self.stream, self.batch_size, self.blurry = stream, batch_size, blurry
        g = torch.Generator().manual_seed(seed)
        parts = []
        for e in stream:
            order = torch.randperm(e.n_train, generator=g) if shuffle else torch.arange(e.n_train)
            parts.append((e.x_train[order], e.y_train[order], e.train_tasks()[order],
                          torch.full((e.n_train,), e.id, dtype=torch.long)))
        self.x, self.y, self.t, self.e = (torch.cat([p[i] for p in parts]) for i in range(4))
        sizes = [e.n_train for e in stream]
        self.boundaries = [sum(sizes[: k + 1]) for k in range(len(sizes))]
        for k, edge in enumerate(self.boundaries[:-1]):
            w = round(blurry * min(sizes[k], sizes[k + 1]))
            if w:
                window = torch.arange(edge - w, edge + w)
                mixed = window[torch.randperm(len(window), generator=g)]
                for a in ("x", "y", "t", "e"):
                    getattr(self, a)[window] = getattr(self, a)[mixed].clone()

    @property
    def n_samples(self) -> int:
        """Training samples of the whole stream."""
        return len(self.y)

    def __len__(self) -> int:
        return -(-self.n_samples // self.batch_size)

    def __iter__(self) -> Iterator[OnlineBatch]:
        for i in range(0, self.n_samples, self.batch_size):
            s = slice(i, i + self.batch_size)
            yield OnlineBatch(self.x[s], self.y[s], self.t[s], self.e[s])
