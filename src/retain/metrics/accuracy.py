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

    Args:
        R: the accuracy matrix, ``T x T``, 0-1: ``R[i, j]`` on experience ``j`` after training experience ``i``.

    Returns:
        The mean of the last row, 0-1.

    Raises:
        ValueError: when ``R`` is not a non-empty square matrix.

    >>> average_accuracy([[1.0, 0.0], [0.6, 0.8]])
    0.7
    """
    return float(_square(R)[-1].mean())


def stream_accuracy(R: Matrix, test_sizes: Sequence[int]) -> float:
    """Final accuracy over all test patterns: ``R[T-1]`` weighted by each test set's size.

    Args:
        R: the accuracy matrix, ``T x T``, 0-1: ``R[i, j]`` on experience ``j`` after training experience ``i``.
        test_sizes: the number of test samples of each experience (``T`` counts, not all 0).

    Returns:
        The weighted mean of the last row, 0-1.

    Raises:
        ValueError: when ``R`` is not square or ``test_sizes`` is not ``T`` non-negative counts.

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

    Args:
        R: the accuracy matrix, ``T x T``, 0-1: ``R[i, j]`` on experience ``j`` after training experience ``i``.

    Returns:
        ``T - 1`` drops, 0-1 (negative where accuracy rose); empty when ``T = 1``.

    Raises:
        ValueError: when ``R`` is not a non-empty square matrix.

    >>> forgetting_per_experience([[1.0, 0.0, 0.0], [0.5, 0.8, 1.0], [0.2, 1.0, 0.5]]).tolist()
    [0.8, -0.19999999999999996]
    """
    R = _square(R)
    if R.shape[0] == 1:
        return np.empty(0)
    drops: np.ndarray = R[:-1, :-1].max(axis=0) - R[-1, :-1]
    return drops


def forgetting(R: Matrix) -> float:
    """Average forgetting over ``j < T-1`` (``nan`` when ``T = 1``).

    Args:
        R: the accuracy matrix, ``T x T``, 0-1: ``R[i, j]`` on experience ``j`` after training experience ``i``.

    Returns:
        The mean of :func:`forgetting_per_experience` (positive: accuracy lost); ``nan`` when ``T = 1``.

    Raises:
        ValueError: when ``R`` is not a non-empty square matrix.
    """
    f = forgetting_per_experience(R)
    return float(f.mean()) if f.size else float("nan")


def bwt(R: Matrix) -> float:
    """Backward transfer ``mean_{j<T-1} (R[T-1, j] - R[j, j])`` (Lopez-Paz & Ranzato 2017).

    Args:
        R: the accuracy matrix, ``T x T``, 0-1: ``R[i, j]`` on experience ``j`` after training experience ``i``.

    Returns:
        The mean change since each experience was learned, -1 to 1 (negative: forgetting); ``nan`` when ``T = 1``.

    Raises:
        ValueError: when ``R`` is not a non-empty square matrix.

    >>> round(bwt([[1.0, 0.0, 0.0], [0.5, 0.8, 1.0], [0.2, 1.0, 0.5]]), 4)
    -0.3
    """
    R = _square(R)
    T = R.shape[0]
    return float((R[-1, :-1] - np.diag(R)[:-1]).mean()) if T > 1 else float("nan")


def fwt(R: Matrix, b: Sequence[float]) -> float:
    """Forward transfer ``mean_{j>0} (R[j-1, j] - b[j])`` (Lopez-Paz & Ranzato 2017).

    Args:
        R: the accuracy matrix, ``T x T``, 0-1: ``R[i, j]`` on experience ``j`` after training experience ``i``.
        b: the untrained model's accuracy on each experience, 0-1 (``T`` values).

    Returns:
        The mean gain on each experience before it is learned, -1 to 1; ``nan`` when ``T = 1``.

    Raises:
        ValueError: when ``R`` is not square or ``b`` does not hold ``T`` values.

    >>> round(fwt([[1.0, 0.0, 0.0], [0.5, 0.8, 1.0], [0.2, 1.0, 0.5]], [0.1, 0.1, 0.1]), 4)
    0.4
    """
    R = _square(R)
    base = np.asarray(b, dtype=float)
    if base.shape != (R.shape[0],):
        raise ValueError(f"b must hold one accuracy per experience ({R.shape[0]}), got {base.shape[0]}")
    T = R.shape[0]
    return float(np.mean([R[j - 1, j] - base[j] for j in range(1, T)])) if T > 1 else float("nan")


def avalanche_forgetting(R: Matrix) -> np.ndarray:
    """Avalanche's forgetting: ``F[i, j] = R[j, j] - R[i, j]`` for ``j < i`` (accuracy right
    after training ``j`` minus accuracy after ``i``), 0 elsewhere.

    Args:
        R: the accuracy matrix, ``T x T``, 0-1: ``R[i, j]`` on experience ``j`` after training experience ``i``.

    Returns:
        The ``T x T`` forgetting matrix, lower triangular.

    Raises:
        ValueError: when ``R`` is not a non-empty square matrix.

    >>> avalanche_forgetting([[1, 0, 0], [.5, .8, 1], [.2, 1, .5]]).round(4).tolist()
    [[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.8, -0.2, 0.0]]
    """
    R = _square(R)
    return np.tril(np.diag(R)[None, :] - R, k=-1)


def accuracy_curve(R: Matrix) -> np.ndarray:
    """Average accuracy on the experiences seen so far after each one: ``mean_{j<=i} R[i, j]``.

    Args:
        R: the accuracy matrix, ``T x T``, 0-1: ``R[i, j]`` on experience ``j`` after training experience ``i``.

    Returns:
        ``T`` accuracies, 0-1.

    Raises:
        ValueError: when ``R`` is not a non-empty square matrix.

    >>> accuracy_curve([[1.0, 0.0], [0.6, 0.8]]).tolist()
    [1.0, 0.7]
    """
    R = _square(R)
    return np.array([R[i, : i + 1].mean() for i in range(R.shape[0])])


def summarize(R: Matrix, b: Sequence[float] | None = None, test_sizes: Sequence[int] | None = None) -> dict[str, float]:
    """Every scalar metric of one run, by name.

    Args:
        R: the accuracy matrix, ``T x T``, 0-1: ``R[i, j]`` on experience ``j`` after training experience ``i``.
        b: the untrained model's accuracy on each experience; None: no ``fwt``.
        test_sizes: the test samples of each experience; None: no ``stream_acc``.

    Returns:
        ``acc``, ``forgetting`` and ``bwt``, with ``fwt`` and ``stream_acc`` when their inputs are given.

    Raises:
        ValueError: when ``R``, ``b`` or ``test_sizes`` do not fit together.
    """
    out = {"acc": average_accuracy(R), "forgetting": forgetting(R), "bwt": bwt(R)}
    if b is not None:
        out["fwt"] = fwt(R, b)
    if test_sizes is not None:
        out["stream_acc"] = stream_accuracy(R, test_sizes)
    return out
