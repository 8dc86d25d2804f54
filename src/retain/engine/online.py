"""Online and hybrid learning on a stream of incoming batches, evaluated as it goes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from retain.data import Experience, OnlineStream
from retain.engine.learner import Learner

TRIGGERS = ("schedule", "new_class", "drift")


@dataclass
class Hybrid:
    """When and how to consolidate during an online run.

    A consolidation is a short offline pass (``epochs``) over the replay memory plus the last
    ``window`` samples, run with ``Learner.fit`` so every strategy's experience hooks take part.
    It fires every ``every`` samples, when a class never seen appears (``on_new_class``), or when
    the drift detector (``drift``: ``page_hinkley`` or ``adwin`` from river) flags a rise of the
    prequential error. A trigger's consolidation runs ``delay`` samples later, once the window
    holds the new data; ``cooldown`` samples must pass between two consolidations.
    """

    every: int | None = None
    on_new_class: bool = True
    drift: str | None = "page_hinkley"
    window: int = 1000
    epochs: int = 5
    cooldown: int = 100
    delay: int = 0

    def detector(self) -> Any:
        if self.drift is None:
            return None
        from river import drift

        if self.drift == "page_hinkley":
            # "up": only a rising error is a drift; a model getting better is not an alarm.
            return drift.PageHinkley(min_instances=30, delta=0.005, threshold=25.0, mode="up")
        if self.drift == "adwin":
            return drift.ADWIN()
        raise ValueError(f"drift must be 'page_hinkley', 'adwin' or None, got {self.drift!r}")


class _Window:
    """The most recent ``size`` samples seen."""

    def __init__(self, size: int) -> None:
        self.size, self.parts, self.count = size, [], 0

    def add(self, x: Tensor, y: Tensor, t: Tensor) -> None:
        self.parts.append((x, y, t))
        self.count += len(y)
        while self.count - len(self.parts[0][1]) >= self.size:  # the oldest part is not needed
            self.count -= len(self.parts.pop(0)[1])

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(torch.cat([p[i] for p in self.parts])[-self.size:] for i in range(3))


def _memory_of(learner: Learner) -> tuple[Tensor, Tensor, Tensor] | None:
    for s in learner.strategies:
        mem = getattr(s, "memory_", None)
        if mem is not None and len(mem):
            return mem.x, mem.y, mem.t
    return None


def run_online(
    learner: Learner,
    online: OnlineStream,
    *,
    steps: int = 1,
    eval_every: int = 500,
    hybrid: Hybrid | None = None,
    tick: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    """Feed ``online`` to ``learner.partial_fit`` batch by batch (test-then-train).

    Measures prequential accuracy (each batch predicted *before* it is learned), "anytime"
    accuracy on the test samples of every class seen so far every ``eval_every`` samples, the
    accuracy matrix at the stream's experience boundaries, the latency of every
    ``partial_fit`` call, and, with ``hybrid``, every consolidation with its trigger, cost and
    anytime accuracy before and after.
    """
    stream = online.stream
    test_x = torch.cat([e.x_test for e in stream])
    test_y = torch.cat([e.y_test for e in stream])
    test_t = torch.cat([e.test_tasks() for e in stream])
    seen: set[int] = set()

    def anytime() -> float:
        mask = torch.isin(test_y, torch.tensor(sorted(seen)))
        return float((learner.predict(test_x[mask], test_t[mask]) == test_y[mask]).float().mean())

    detector = hybrid.detector() if hybrid else None
    window = _Window(hybrid.window) if hybrid else None
    correct = done = last_eval = last_consolidation = 0
    boundary = 0
    pending: tuple[str, int] | None = None  # (trigger, sample count at which to consolidate)
    prequential, anytime_curve, rows, latencies, consolidations = [], [], [], [], []
    start = time.perf_counter()
    for batch in online:
        pred = learner.predict(batch.x, batch.t)
        hits = pred == batch.y
        correct += int(hits.sum())
        new_class = bool(set(batch.y.tolist()) - seen)
        seen |= set(batch.y.tolist())
        began = time.perf_counter()
        learner.partial_fit(batch.x, batch.y, batch.t, steps=steps, hybrid=hybrid is not None)
        latencies.append(1000 * (time.perf_counter() - began))
        done += len(batch.y)
        prequential.append((done, correct / done))
        if hybrid:
            window.add(batch.x, batch.y, batch.t)
            drifted = False
            if detector is not None:
                for miss in (~hits).tolist():
                    detector.update(float(miss))
                    drifted = drifted or detector.drift_detected
            trigger = next((name for name, fired in (
                ("new_class", hybrid.on_new_class and new_class and done > len(batch.y)),
                ("drift", drifted),
                ("schedule", hybrid.every is not None and done // hybrid.every > (done - len(batch.y)) // hybrid.every),
            ) if fired), None)
            if trigger and pending is None and done - last_consolidation >= hybrid.cooldown:
                pending = (trigger, done + hybrid.delay)
            if pending is not None and (done >= pending[1] or done == online.n_samples):
                consolidations.append(_consolidate(learner, window, hybrid, pending[0], done, anytime,
                                                   len(consolidations), stream[0].scenario))
                last_consolidation, pending = done, None
        if done - last_eval >= eval_every or done == online.n_samples:
            anytime_curve.append((done, anytime()))
            last_eval = done
        while boundary < len(online.boundaries) and done >= online.boundaries[boundary]:
            rows.append(learner.evaluate(stream))
            boundary += 1
        tick(len(batch.y))
    seconds = time.perf_counter() - start
    lat = np.array(latencies)
    return {
        "matrix": rows,
        "prequential_acc": correct / max(done, 1),
        "prequential": prequential[:: max(1, len(prequential) // 200)],
        "anytime": anytime_curve,
        "consolidations": consolidations,
        "gradient_steps": learner.steps_,
        "samples": done,
        "seconds": seconds,
        "samples_per_second": done / seconds if seconds else math.inf,
        "update_samples_per_second": done / (lat.sum() / 1000) if lat.sum() else math.inf,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def _consolidate(learner: Learner, window: _Window, hybrid: Hybrid, trigger: str, at: int,
                 anytime: Callable[[], float], index: int, scenario: str) -> dict[str, Any]:
    x, y, t = window.tensors()
    memory = _memory_of(learner)
    if memory is not None:
        x, y, t = (torch.cat([a, b.to(a.device)]) for a, b in zip((x, y, t), memory, strict=True))
    before = anytime()
    began = time.perf_counter()
    steps = learner.steps_
    exp = Experience(x, y, x[:0], y[:0], id=index, t_train=t, t_test=t[:0], scenario=scenario)
    learner.fit(exp, epochs=hybrid.epochs, incoming=False)
    return {"trigger": trigger, "at_sample": at, "seconds": time.perf_counter() - began,
            "gradient_steps": learner.steps_ - steps, "samples": len(y),
            "anytime_before": before, "anytime_after": anytime()}
