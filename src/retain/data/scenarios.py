"""Scenario builders: turn a data set into a class-, task- or domain-incremental stream."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from retain.data.datasets import Dataset
from retain.data.experience import Experience, Stream


def _class_order(n_classes: int, class_order: Sequence[int] | None, seed: int | None) -> list[int]:
    if class_order is not None:
        if sorted(class_order) != list(range(n_classes)):
            raise ValueError(
                f"class_order must be a permutation of 0..{n_classes - 1}, got {list(class_order)}"
            )
        return list(class_order)
    if seed is None:
        return list(range(n_classes))
    return torch.randperm(n_classes, generator=torch.Generator().manual_seed(seed)).tolist()


def _split_by_class(
    data: Dataset, n_experiences: int, class_order: Sequence[int] | None, seed: int | None,
    task_ids: bool,
) -> Stream:
    n = data.n_classes
    if not 1 <= n_experiences <= n:
        raise ValueError(f"n_experiences must be between 1 and {n} (the number of classes), got {n_experiences}")
    order = _class_order(n, class_order, seed)
    # Relabel so experience k holds consecutive labels: a growing head then only appends units.
    relabel = torch.empty(n, dtype=torch.long)
    relabel[torch.tensor(order)] = torch.arange(n)
    bounds = [round(k * n / n_experiences) for k in range(n_experiences + 1)]
    experiences = []
    for k in range(n_experiences):
        new = list(range(bounds[k], bounds[k + 1]))
        tr = torch.isin(relabel[data.y_train], torch.tensor(new))
        te = torch.isin(relabel[data.y_test], torch.tensor(new))
        experiences.append(Experience(
            data.x_train[tr], relabel[data.y_train[tr]], data.x_test[te], relabel[data.y_test[te]],
            id=k, task=k if task_ids else 0, classes=tuple(new),
            metadata={"original_classes": [order[c] for c in new]},
            scenario="task_incremental" if task_ids else "class_incremental",
        ))
    kind = "task_incremental" if task_ids else "class_incremental"
    return Stream(
        experiences, n_classes=n, name=f"split_{data.name}", scenario=kind,
        class_names=tuple(data.class_names[c] for c in order), metadata={"class_order": order},
    )


def class_incremental(
    data: Dataset, n_experiences: int, class_order: Sequence[int] | None = None,
    seed: int | None = None,
) -> Stream:
    """Split the classes into ``n_experiences`` groups that arrive one after another.

    Classes come in ``class_order``, else shuffled by ``seed``, else in natural order; labels
    are renumbered in order of arrival (``stream.class_names`` maps them back).

    Args:
        data: the data set to split.
        n_experiences: experiences to cut, 1 up to the number of classes; classes divide as evenly as they can.
        class_order: the order classes arrive in, a permutation of ``0 .. n_classes-1``; None: by ``seed``.
        seed: seed of a shuffled class order; None (and no ``class_order``): the natural order.

    Returns:
        The stream, its ``metadata["class_order"]`` the original class ids in order of arrival.

    Raises:
        ValueError: when ``n_experiences`` is out of range or ``class_order`` is no permutation.

    >>> from retain.data.datasets import digits
    >>> s = class_incremental(digits(), 5)
    >>> [e.classes for e in s][:2], s[0].task
    ([(0, 1), (2, 3)], 0)
    """
    return _split_by_class(data, n_experiences, class_order, seed, task_ids=False)


def task_incremental(
    data: Dataset, n_experiences: int, class_order: Sequence[int] | None = None,
    seed: int | None = None,
) -> Stream:
    """Like :func:`class_incremental`, but each experience carries its task id (0, 1, ...).

    Args:
        data: the data set to split.
        n_experiences: experiences (tasks) to cut, 1 up to the number of classes.
        class_order: the order classes arrive in, a permutation of ``0 .. n_classes-1``; None: by ``seed``.
        seed: seed of a shuffled class order; None (and no ``class_order``): the natural order.

    Returns:
        The stream, experience ``k`` with task id ``k``.

    Raises:
        ValueError: when ``n_experiences`` is out of range or ``class_order`` is no permutation.
    """
    return _split_by_class(data, n_experiences, class_order, seed, task_ids=True)


def _domain_stream(data: Dataset, n_experiences: int, kind: str,
                   transforms: list[Callable[[Tensor], Tensor]]) -> Stream:
    if n_experiences < 1:
        raise ValueError(f"n_experiences must be at least 1, got {n_experiences}")
    classes = tuple(range(data.n_classes))
    experiences = [
        Experience(f(data.x_train), data.y_train, f(data.x_test), data.y_test, id=k, classes=classes,
                   scenario="domain_incremental")
        for k, f in enumerate(transforms)
    ]
    return Stream(experiences, n_classes=data.n_classes, name=f"{kind}_{data.name}",
                  scenario="domain_incremental", class_names=data.class_names,
                  metadata={"transform": kind})


def permuted(data: Dataset, n_experiences: int, seed: int = 0) -> Stream:
    """Domain-incremental: every experience shuffles the pixels with its own fixed permutation.

    Experience 0 is the original data; the others use permutations drawn from ``seed``.

    Args:
        data: the data set every experience permutes.
        n_experiences: experiences, at least 1.
        seed: seed of the permutations.

    Returns:
        The stream; every experience holds every class.

    Raises:
        ValueError: when ``n_experiences`` is below 1.

    >>> from retain.data.datasets import digits
    >>> s = permuted(digits(), 3)
    >>> len(s), s[1].classes == s[0].classes, bool((s[1].x_train != s[0].x_train).any())
    (3, True, True)
    """
    g = torch.Generator().manual_seed(seed)
    n_pixels = math.prod(data.x_train.shape[1:])
    perms = [torch.arange(n_pixels)] + [
        torch.randperm(n_pixels, generator=g) for _ in range(n_experiences - 1)
    ]

    def permute(perm: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda x: x.flatten(1)[:, perm].reshape(x.shape)

    return _domain_stream(data, n_experiences, "permuted", [permute(p) for p in perms])


def rotated(data: Dataset, n_experiences: int, max_degrees: float = 180.0) -> Stream:
    """Domain-incremental: experience k rotates every image by ``k * max_degrees / n``.

    Args:
        data: the data set of images ``(N, C, H, W)`` every experience rotates.
        n_experiences: experiences, at least 1.
        max_degrees: the rotation the angles step towards, in degrees (the last experience's is
            ``max_degrees * (n - 1) / n``).

    Returns:
        The stream, its angles in ``metadata["degrees"]``.

    Raises:
        ValueError: when ``n_experiences`` is below 1.
    """
    def rotate(degrees: float) -> Callable[[Tensor], Tensor]:
        def apply(x: Tensor) -> Tensor:
            a = math.radians(degrees)
            theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
            grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
            return F.grid_sample(x, grid, align_corners=False)
        return apply

    angles = [k * max_degrees / n_experiences for k in range(n_experiences)]
    stream = _domain_stream(data, n_experiences, "rotated", [rotate(a) for a in angles])
    stream.metadata["degrees"] = angles
    return stream


SCENARIOS: dict[str, Callable[..., Stream]] = {
    "class_incremental": class_incremental,
    "task_incremental": task_incremental,
    "permuted": permuted,
    "rotated": rotated,
}


def build_scenario(kind: str, data: Dataset, n_experiences: int, **options: Any) -> Stream:
    """Build a stream by scenario name (the names the config file uses).

    Args:
        kind: a key of :data:`SCENARIOS` (``class_incremental``, ``task_incremental``, ``permuted``, ``rotated``).
        data: the data set to cut.
        n_experiences: experiences in the stream.
        **options: the scenario builder's other arguments (``class_order``, ``seed``, ``max_degrees``).

    Returns:
        The stream.

    Raises:
        ValueError: when ``kind`` names no scenario.
    """
    if kind not in SCENARIOS:
        raise ValueError(f"unknown scenario {kind!r}; choose one of: {', '.join(SCENARIOS)}")
    return SCENARIOS[kind](data, n_experiences, **options)
