"""Metrics of the accuracy matrix, each defined once.

``R[i, j]`` is the accuracy on experience ``j``'s test set after training experience ``i``;
``b[j]`` is the accuracy of the untrained model on ``j``; ``T`` is the number of experiences.
A metric that needs an earlier experience than exists (forgetting, BWT, FWT with ``T = 1``)
is ``nan``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Matrix = Sequence[Sequence[float]] | np.ndarray


def _square(R: Matrix) -> np.ndarray:
    try:
        R = np.asarray(R, dtype=float)
    except ValueError:
        raise ValueError("the accuracy matrix must be square T x T; its rows differ in length") from None
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"the accuracy matrix must be square T x T with T >= 1, got shape {R.shape}")
    return R


def average_accuracy(R: Matrix) -> float:
    """``ACC = mean_j R[T-1, j]``: final accuracy averaged over experiences.

    >>> average_accuracy([[1.0, 0.0], [0.6, 0.8]])
    0.7
    """
    return float(_square(R)[-1].mean())


def stream_accuracy(R: Matrix, test_sizes: Sequence[int]) -> float:
    """Final accuracy over all test patterns: ``R[T-1]`` weighted by each test set's size.

    >>> round(stream_accuracy([[1.0, 0.0], [0.6, 0.8]], [100, 300]), 4)
    0.75
    """
    R = _square(R)
    w = np.asarray(test_sizes, dtype=float)
    if w.shape != (R.shape[1],) or (w < 0).any() or w.sum() == 0:
        raise ValueError(f"test_sizes must be {R.shape[1]} non-negative counts, got {list(test_sizes)}")
    return float((R[-1] * w).sum() / w.sum())


def forgetting_per_experience(R: Matrix) -> np.ndarray:
    """Forgetting of each ``j < T-1``: ``max_{l < T-1} R[l, j] - R[T-1, j]`` (Chaudhry et al. 2018).

    >>> forgetting_per_experience([[1.0, 0.0, 0.0], [0.5, 0.8, 1.0], [0.2, 1.0, 0.5]]).tolist()
    [0.8, -0.19999999999999996]
    """
    R = _square(R)
    if R.shape[0] == 1:
        return np.empty(0)
    return R[:-1, :-1].max(axis=0) - R[-1, :-1]


def forgetting(R: Matrix) -> float:
    """Average forgetting over ``j < T-1`` (``nan`` when ``T = 1``)."""
    f = forgetting_per_experience(R)
    return float(f.mean()) if f.size else float("nan")


def bwt(R: Matrix) -> float:
    """Backward transfer ``mean_{j<T-1} (R[T-1, j] - R[j, j])`` (Lopez-Paz & Ranzato 2017).

    >>> round(bwt([[1.0, 0.0, 0.0], [0.5, 0.8, 1.0], [0.2, 1.0, 0.5]]), 4)
    -0.3
    """
    R = _square(R)
    T = R.shape[0]
    return float((R[-1, :-1] - np.diag(R)[:-1]).mean()) if T > 1 else float("nan")


def fwt(R: Matrix, b: Sequence[float]) -> float:
    """Forward transfer ``mean_{j>0} (R[j-1, j] - b[j])`` (Lopez-Paz & Ranzato 2017).

    >>> round(fwt([[1.0, 0.0, 0.0], [0.5, 0.8, 1.0], [0.2, 1.0, 0.5]], [0.1, 0.1, 0.1]), 4)
    0.4
    """
    R = _square(R)
    b = np.asarray(b, dtype=float)
    if b.shape != (R.shape[0],):
        raise ValueError(f"b must hold one accuracy per experience ({R.shape[0]}), got {b.shape[0]}")
    T = R.shape[0]
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)])) if T > 1 else float("nan")


def avalanche_forgetting(R: Matrix) -> np.ndarray:
    """Avalanche's forgetting: ``F[i, j] = R[j, j] - R[i, j]`` for ``j < i`` (accuracy right
    after training ``j`` minus accuracy after ``i``), 0 elsewhere.

    >>> avalanche_forgetting([[1, 0, 0], [.5, .8, 1], [.2, 1, .5]]).round(4).tolist()
    [[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.8, -0.2, 0.0]]
    """
    R = _square(R)
    return np.tril(np.diag(R)[None, :] - R, k=-1)


def accuracy_curve(R: Matrix) -> np.ndarray:
    """Average accuracy on the experiences seen so far after each one: ``mean_{j<=i} R[i, j]``.

    >>> accuracy_curve([[1.0, 0.0], [0.6, 0.8]]).tolist()
    [1.0, 0.7]
    """
    R = _square(R)
    return np.array([R[i, : i + 1].mean() for i in range(R.shape[0])])


def summarize(R: Matrix, b: Sequence[float] | None = None, test_sizes: Sequence[int] | None = None) -> dict[str, float]:
    """Every scalar metric of one run, by name."""
    out = {"acc": average_accuracy(R), "forgetting": forgetting(R), "bwt": bwt(R)}
    if b is not None:
        out["fwt"] = fwt(R, b)
    if test_sizes is not None:
        out["stream_acc"] = stream_accuracy(R, test_sizes)
    return out
