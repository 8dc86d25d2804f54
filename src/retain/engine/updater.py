"""When and how to consolidate a model learning online: the window, the triggers and the consolidation.

An :class:`Updater` is fed one labelled batch at a time. It learns from it online
(``Learner.partial_fit``), keeps the most recent samples, watches for a new class, the schedule or
a drift of the error (river's detectors), and when a trigger is due consolidates: a short offline
pass with ``Learner.fit`` over the strategies' memory plus the recent window, so every strategy's
experience hooks take part. The online runner (``retain.engine.online``) feeds it.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, NonNegativeInt, PositiveInt
from pydantic.dataclasses import dataclass as validated
from torch import Tensor

from retain.data import Experience
from retain.engine.learner import Learner
from retain.metrics.results import Consolidation


@validated(config=ConfigDict(extra="forbid"))
class Hybrid:
    """When and how to consolidate during an online run: the one place these defaults live (a
    config's ``hybrid:`` section is this class).

    A consolidation is a short offline pass (``epochs``) over the replay memory plus the last
    ``window`` samples. It fires every ``every`` samples, when a class never seen appears
    (``on_new_class``), or when the drift detector (``drift``: ``page_hinkley`` or ``adwin`` from
    river) flags a rise of the prequential error. A trigger's consolidation runs ``delay`` samples
    later, once the window holds the new data; ``cooldown`` samples must pass between two.

    Attributes:
        every: samples between consolidations on schedule; None: none on schedule.
        on_new_class: consolidate when a class never seen arrives.
        drift: the drift detector, ``page_hinkley`` or ``adwin``; None: none.
        window: recent samples a consolidation trains on, beside the memory.
        epochs: epochs of a consolidation.
        cooldown: samples between two consolidations at least.
        delay: samples between a trigger and its consolidation.

    >>> Hybrid(every=0)
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for Hybrid
    every
      Input should be greater than 0 ...
    """

    every: PositiveInt | None = Field(default=None, description="samples between consolidations (null: none on "
                                      "schedule)")
    on_new_class: bool = Field(default=True, description="consolidate when a class never seen arrives")
    drift: Literal["page_hinkley", "adwin"] | None = Field(default="page_hinkley",
                                                           description="drift detector (null: none)")
    window: PositiveInt = Field(default=1000, description="recent samples a consolidation trains on, beside the memory")
    epochs: PositiveInt = Field(default=5, description="epochs of a consolidation")
    cooldown: NonNegativeInt = Field(default=100, description="samples between two consolidations at least")
    delay: NonNegativeInt = Field(default=0, description="samples between a trigger and its consolidation")

    def detector(self) -> Any:
        """A new drift detector of the kind ``drift`` names.

        Returns:
            river's detector (Page-Hinkley alarms on a rising error only), or None when ``drift`` is None.
        """
        if self.drift is None:
            return None
        from river import drift

        if self.drift == "page_hinkley":
            # "up": only a rising error is a drift; a model getting better is not an alarm.
            return drift.PageHinkley(min_instances=30, delta=0.005, threshold=25.0, mode="up")
        return drift.ADWIN()  # type: ignore[no-untyped-call]  # river's ADWIN.__init__ has no annotations


class Window:
    """The most recent ``size`` samples seen.

    >>> w = Window(3)
    >>> for k in range(4):
    ...     w.add(torch.full((1, 2), float(k)), torch.tensor([k]), torch.tensor([0]))
    >>> w.tensors()[1].tolist()
    [1, 2, 3]
    """

    def __init__(self, size: int) -> None:
        self.size, self.count = size, 0
        self.parts: list[tuple[Tensor, Tensor, Tensor]] = []

    def add(self, x: Tensor, y: Tensor, t: Tensor) -> None:
        self.parts.append((x, y, t))
        self.count += len(y)
        while self.count - len(self.parts[0][1]) >= self.size:  # the oldest part is not needed
            self.count -= len(self.parts.pop(0)[1])

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        x, y, t = (torch.cat([p[i] for p in self.parts])[-self.size:] for i in range(3))
        return x, y, t


class Updater:
    """Feeds a learner one labelled batch at a time and consolidates when ``hybrid`` says so
    (without ``hybrid``: online learning only, strategies that need experience ends refused).

    Per batch: :meth:`learn` (the online update), then :meth:`observe` (window, triggers), which
    says whether a consolidation is due; :meth:`consolidate` runs it. They are separate so a
    caller can time the online update alone and measure accuracy around a consolidation.

    Args:
        learner: the learner to update.
        hybrid: when and how to consolidate; None: online learning only.
        steps: gradient steps on each batch.
        scenario: the scenario of the consolidations' experiences (``class_incremental``, ...).
    """

    def __init__(self, learner: Learner, hybrid: Hybrid | None = None, *, steps: int = 1,
                 scenario: str = "class_incremental") -> None:
        self.learner, self.hybrid, self.steps, self.scenario = learner, hybrid, steps, scenario
        self.detector = hybrid.detector() if hybrid else None
        self.window = Window(hybrid.window) if hybrid else None
        self.samples = 0  # labelled samples learned so far
        self.seen: set[int] = set()
        self.pending: tuple[str, int] | None = None  # (trigger, sample count at which to consolidate)
        self.last_consolidation = 0
        self.consolidations: list[Consolidation] = []

    def learn(self, x: Tensor, y: Tensor, t: Tensor | None = None) -> None:
        """The online update on one batch (``Learner.partial_fit``).

        Args:
            x: the batch's inputs.
            y: its labels.
            t: its task ids; None: task 0.
        """
        self.learner.partial_fit(x, y, t, steps=self.steps, hybrid=self.hybrid is not None)

    def observe(self, x: Tensor, y: Tensor, t: Tensor, misses: Tensor | None = None, last: bool = False) -> str | None:
        """Record a learned batch (``misses``: which rows the model got wrong before learning
        them, for the drift detector); returns the trigger whose consolidation is due now, if any.
        ``last`` marks the end of the stream: a pending consolidation runs then.

        Args:
            x: the batch's inputs.
            y: its labels.
            t: its task ids.
            misses: per row, whether the model got it wrong before learning it; None: no drift detection.
            last: whether this is the stream's last batch.

        Returns:
            The trigger (``new_class``, ``drift`` or ``schedule``) whose consolidation is due now, or None.
        """
        new_class = bool(set(y.tolist()) - self.seen)
        self.seen |= set(y.tolist())
        self.samples += len(y)
        hybrid, done = self.hybrid, self.samples
        if hybrid is None:
            return None
        assert self.window is not None  # made with hybrid
        self.window.add(x, y, t)
        drifted = False
        if self.detector is not None and misses is not None:
            for miss in misses.tolist():
                self.detector.update(float(miss))
                drifted = drifted or self.detector.drift_detected
        trigger = next((name for name, fired in (
            ("new_class", hybrid.on_new_class and new_class and done > len(y)),
            ("drift", drifted),
            ("schedule", hybrid.every is not None and done // hybrid.every > (done - len(y)) // hybrid.every),
        ) if fired), None)
        if trigger and self.pending is None and done - self.last_consolidation >= hybrid.cooldown:
            self.pending = (trigger, done + hybrid.delay)
        if self.pending is not None and (done >= self.pending[1] or last):
            return self.pending[0]
        return None

    def consolidate(self, trigger: str) -> Consolidation:
        """A short offline pass over the memory plus the recent window.

        Args:
            trigger: what fired it, as :meth:`observe` returned it.

        Returns:
            The consolidation's record (its anytime accuracies are for the caller to fill in).
        """
        learner = self.learner
        assert self.window is not None and self.hybrid is not None  # consolidations are hybrid runs'
        x, y, t = self.window.tensors()
        memories = learner.memories()
        if memories:
            m = memories[0]
            x, y, t = (torch.cat([a, b.to(a.device)]) for a, b in zip((x, y, t), (m.x, m.y, m.t), strict=True))
        began, steps = time.perf_counter(), learner.steps_
        exp = Experience(x, y, x[:0], y[:0], id=len(self.consolidations), t_train=t, t_test=t[:0],
                         scenario=self.scenario)
        learner.fit(exp, epochs=self.hybrid.epochs, incoming=False)
        record = Consolidation(trigger, self.samples, time.perf_counter() - began, learner.steps_ - steps, len(y))
        self.consolidations.append(record)
        self.last_consolidation, self.pending = self.samples, None
        return record
