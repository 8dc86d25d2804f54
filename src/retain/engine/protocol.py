"""The continual protocol, written once: train chunk after chunk, measure each fit's cost, score after each.

``retain run`` (a classifier's methods), translation runs and tuning trials all train this way:
a stream's experiences one after the other (or the merged stream for joint training), a row of
scores after each, the time and peak memory of each fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from retain.metrics import PeakMemory, average_accuracy, stream_accuracy, summarize


@dataclass
class Trained:
    """What :func:`train_and_score` measured."""

    rows: list[list[float]]  # a row of scores after each chunk (the mean over the learners)
    seconds: list[float]  # each chunk's training time (the mean over the learners)
    peaks: list[float]  # each chunk's peak memory in MB (the largest of the learners')


def train_and_score(learners: Sequence[Any], chunks: Sequence[Any], score: Callable[[Any], list[float]],
                    tick: Callable[[int, Trained], None] = lambda i, so_far: None,
                    fit: Callable[[Any, Any], Any] = lambda learner, chunk: learner.fit(chunk)) -> Trained:
    """Train each of ``learners`` (one per seed, in step) on each of ``chunks`` in turn with
    ``fit``, and ``score`` them after each; ``tick(i, so_far)`` hears of what was measured up to
    chunk ``i`` as it comes (a tuning trial reports it, and may stop the trial there by raising).

    >>> class Counter:
    ...     device = "cpu"
    ...     seen = 0
    ...     def fit(self, chunk):
    ...         self.seen += chunk
    >>> train_and_score([Counter()], [1, 2], lambda learner: [learner.seen]).rows
    [[1], [3]]
    """
    trained = Trained([], [], [])
    for i, chunk in enumerate(chunks):
        spent, peak, scored = 0.0, 0.0, []
        for learner in learners:
            with PeakMemory(learner.device) as cost:
                fit(learner, chunk)
            spent, peak = spent + cost.seconds, max(peak, cost.peak_mb)
            scored.append(score(learner))
        row = scored[0] if len(scored) == 1 else [sum(column) / len(column) for column in zip(*scored, strict=True)]
        trained.rows.append(row)
        trained.seconds.append(spent / len(learners))
        trained.peaks.append(peak)
        tick(i, trained)
    return trained


def stream_summary(rows: list[list[float]], untrained: list[float], sizes: list[int], whole_stream: bool
                   ) -> dict[str, float]:
    """The scalar metrics of a score matrix (:func:`retain.metrics.summarize`); a model trained once
    on the whole stream (joint) has a final row only, so no forgetting or transfer."""
    if not whole_stream:
        return summarize(rows, untrained, sizes)
    final = [rows[-1]] * len(sizes)
    return {"acc": average_accuracy(final), "stream_acc": stream_accuracy(final, sizes),
            "forgetting": math.nan, "bwt": math.nan, "fwt": math.nan}
