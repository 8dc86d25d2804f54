"""Online and hybrid learning on a stream of incoming batches, evaluated as it goes (test-then-train)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from retain.data import OnlineStream
from retain.engine.learner import Learner
from retain.engine.updater import Hybrid, Updater
from retain.metrics.results import OnlineResult


def run_online(
    learner: Learner,
    online: OnlineStream,
    *,
    steps: int = 1,
    eval_every: int = 500,
    hybrid: Hybrid | None = None,
    tick: Callable[[int], None] = lambda n: None,
) -> OnlineResult:
    """Feed ``online`` to an :class:`~retain.engine.updater.Updater` batch by batch (test-then-train).

    Measures prequential accuracy (each batch predicted *before* it is learned), "anytime"
    accuracy on the test samples of every class seen so far every ``eval_every`` samples, the
    accuracy matrix at the stream's experience boundaries, the latency of every online update,
    and, with ``hybrid``, every consolidation with its trigger, cost and anytime accuracy before
    and after.

    Args:
        learner: the learner, updated in place.
        online: the stream of incoming batches.
        steps: gradient steps on each batch.
        eval_every: samples between two measures of anytime accuracy.
        hybrid: when and how to consolidate; None: online learning only.
        tick: called after each batch with its size (a progress bar's update).

    Returns:
        What the pass measured.
    """
    stream = online.stream
    test_x = torch.cat([e.x_test for e in stream])
    test_y = torch.cat([e.y_test for e in stream])
    test_t = torch.cat([e.test_tasks() for e in stream])
    updater = Updater(learner, hybrid, steps=steps, scenario=stream[0].scenario)

    def anytime() -> float:
        mask = torch.isin(test_y, torch.tensor(sorted(updater.seen)))
        return float((learner.predict(test_x[mask], test_t[mask]) == test_y[mask]).float().mean())

    correct = last_eval = boundary = 0
    prequential, anytime_curve, rows, latencies = [], [], [], []
    start = time.perf_counter()
    for batch in online:
        hits = learner.predict(batch.x, batch.t) == batch.y
        correct += int(hits.sum())
        began = time.perf_counter()
        updater.learn(batch.x, batch.y, batch.t)
        latencies.append(1000 * (time.perf_counter() - began))
        trigger = updater.observe(batch.x, batch.y, batch.t, ~hits, last=updater.samples + len(batch.y) ==
                                  online.n_samples)
        done = updater.samples
        prequential.append((done, correct / done))
        if trigger:
            before = anytime()
            record = updater.consolidate(trigger)
            record.anytime_before, record.anytime_after = before, anytime()
        if done - last_eval >= eval_every or done == online.n_samples:
            anytime_curve.append((done, anytime()))
            last_eval = done
        while boundary < len(online.boundaries) and done >= online.boundaries[boundary]:
            rows.append(learner.evaluate(stream))
            boundary += 1
        tick(len(batch.y))
    seconds = time.perf_counter() - start
    lat = np.array(latencies)
    done = updater.samples
    return OnlineResult(
        matrix=rows,
        prequential_acc=correct / max(done, 1),
        prequential=prequential[:: max(1, len(prequential) // 200)],
        anytime=anytime_curve,
        consolidations=updater.consolidations,
        gradient_steps=learner.steps_,
        samples=done,
        seconds=seconds,
        samples_per_second=done / seconds if seconds else math.inf,
        update_samples_per_second=done / (lat.sum() / 1000) if lat.sum() else math.inf,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
    )
