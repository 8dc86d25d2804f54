"""Checks on an incoming batch (shapes, values, labels) that return a report of every problem found."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


class BatchRefused(ValueError):
    """A batch that cannot be learned from; the message names the first problem found.

    Args:
        report: what :func:`check_batch` or :func:`check_inputs` found (``problems`` not empty).
    """

    def __init__(self, report: BatchReport) -> None:
        super().__init__(f"{report.where}: {report.problems[0]}")
        self.report = report


@dataclass
class BatchReport:
    """What :func:`check_batch` found: the batch as tensors when it passed, and every problem.

    ``new_classes`` are labels the model has not learned yet (a growing head gains them).

    Attributes:
        where: what the batch is, named in messages (``partial_fit``, a file).
        rows: the batch's rows (0 when it is no batch).
        problems: every problem found; empty: the batch passed.
        new_classes: labels the model has not learned yet.
        x: the inputs as float32, when the batch passed.
        y: the labels as int64, when the batch passed.
        t: the task ids as int64, when the batch passed.
    """

    where: str
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    new_classes: list[int] = field(default_factory=list)
    x: Tensor | None = None
    y: Tensor | None = None
    t: Tensor | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_refused(self) -> BatchReport:
        """The report itself when the batch passed, else :class:`BatchRefused`.

        Returns:
            The report, when it holds no problem.

        Raises:
            BatchRefused: the report holds a problem; it names the first.
        """
        if self.problems:
            raise BatchRefused(self)
        return self



def check_batch(x: Any, y: Any, t: Any = None, *, n_features: int | None = None, n_classes: int | None = None,
                known_classes: list[int] | tuple[int, ...] = (), where: str = "batch") -> BatchReport:
    """Check a labelled batch before it may change a model, and return what was found.

    ``x`` must be a non-empty ``(n, features...)`` batch of finite numbers with ``n_features``
    values a row (when the model states it); ``y`` one integer label a row, within
    ``0..n_classes-1`` (``None``: a head that grows takes any label from 0); ``t`` a task id
    (an int, ``None`` for 0) or one a row. Checks stop at the first problem that makes the later
    ones meaningless (a batch of the wrong shape is not scanned for NaN).

    Args:
        x: the inputs, anything ``torch.as_tensor`` reads.
        y: one integer label a row.
        t: a task id for every row (an int; None: 0) or one a row.
        n_features: the values a row the model takes (None: any).
        n_classes: the classes the model has (None: a head that grows takes any label from 0).
        known_classes: the labels the model has learned; the others are reported new.
        where: what the batch is, named in messages.

    Returns:
        What was found; :meth:`BatchReport.raise_if_refused` raises on a problem.

    >>> r = check_batch(torch.rand(2, 4), torch.tensor([0, 3]), n_features=4, n_classes=3, where="partial_fit")
    >>> r.ok, r.problems
    (False, ["label 3 is outside the model's classes 0..2"])
    >>> check_batch(torch.rand(2, 4), torch.tensor([0, 2]), n_classes=3, known_classes=[0]).new_classes
    [2]
    """
    report = BatchReport(where)
    problems = report.problems
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y)
    report.rows = len(x) if x.dim() else 0
    if x.dim() < 2 or len(x) == 0:
        problems.append(f"x must be a non-empty batch (n, features...), got shape {tuple(x.shape)}")
        return report
    if y.dim() != 1 or len(y) != len(x):
        problems.append(f"y must hold one label per row of x ({len(x)}), got shape {tuple(y.shape)}")
        return report
    if n_features is not None and x.numel() // len(x) != n_features:
        problems.append(f"each sample must have {n_features} values, got {x.numel() // len(x)} "
                        f"(shape {tuple(x.shape[1:])})")
        return report
    # One reduction first (NaN and inf propagate into the sum); the exact check only if it fails.
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        problems.append("x holds NaN or infinite values")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        problems.append(f"labels must be integers, got {y.dtype}")
        return report
    limit = n_classes if n_classes is not None else 2**31
    low, high = torch.aminmax(y)
    if low < 0 or high >= limit:
        bad = int(low) if low < 0 else int(high)
        allowed = f"0..{limit - 1}" if limit < 2**31 else "0 and up"
        problems.append(f"label {bad} is outside the model's classes {allowed}")
    t = torch.full((len(y),), t or 0, dtype=torch.long) if t is None or isinstance(t, int) else torch.as_tensor(t)
    if t.shape != y.shape:
        problems.append(f"t must hold one task id per sample, got shape {tuple(t.shape)}")
    if problems:
        return report
    report.x, report.y, report.t = x, y.long(), t.long()
    labels = set(y.tolist())
    report.new_classes = sorted(labels - set(known_classes))
    return report


def check_inputs(x: Any, *, n_features: int | None = None, tokens: bool = False, where: str = "predict") -> Tensor:
    """Inputs to predict from, as a tensor: a ``(n, features...)`` batch of finite numbers (float32)
    with ``n_features`` values a row when the model states it, or of token ids (``tokens``, kept as
    integers).

    Args:
        x: the inputs, anything ``torch.as_tensor`` reads.
        n_features: the values a row the model takes (None: any).
        tokens: whether the inputs are token ids (kept as integers, not made floats).
        where: what the inputs are, named in messages.

    Returns:
        The inputs as a tensor: floats (float64 made float32), or token ids as int64.

    Raises:
        BatchRefused: the inputs are no batch, have the wrong number of values a row, or hold NaN or
            infinite values; it names the problem.

    >>> check_inputs([[0.5, float("nan")]], where="predict")
    Traceback (most recent call last):
    ...
    retain.quality.checks.BatchRefused: predict: x holds NaN or infinite values
    """
    x = torch.as_tensor(x)
    x = x.long() if tokens else x if x.dtype.is_floating_point else x.float()
    report = BatchReport(where, rows=len(x) if x.dim() else 0)
    if x.dim() < 2:
        report.problems.append(f"x must be a batch (n, features...), got shape {tuple(x.shape)}")
    elif len(x) and n_features is not None and x.numel() // len(x) != n_features:
        report.problems.append(f"each sample must have {n_features} values, got {x.numel() // len(x)} "
                               f"(shape {tuple(x.shape[1:])})")
    elif x.dtype.is_floating_point and not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        report.problems.append("x holds NaN or infinite values")
    report.raise_if_refused()
    checked: Tensor = x.float() if x.dtype == torch.float64 else x
    return checked
