"""Shared base of the replay methods that also distil the old model (iCaRL, BiC)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from retain.models import Classifier
from retain.strategies.contract import LearnerView, Step
from retain.strategies.distillation import (
    OldOutputs,
    columns,
    distillation,
    frozen_copy,
    load_old_model,
    old_model_state,
)
from retain.strategies.memory import MemoryStrategy


class DistilledReplay(MemoryStrategy):
    """Appends ``ratio`` memory samples per new sample to each batch, a replayed row weighing
    ``weight`` times a new one in the cross-entropy, and adds ``alpha * T^2 KL`` between the old
    model's and the current model's outputs on the old classes. Subclasses declare ``ratio``,
    ``weight``, ``alpha`` and ``temperature``, build ``memory_`` and call :meth:`snapshot` before
    an experience."""

    ratio: float
    weight: float
    alpha: float
    temperature: float
    old_model_: Classifier | None = None
    old_classes_: tuple[int, ...] | list[int] = ()

    def _set_old(self, model: Classifier | None, classes: list[int]) -> None:
        """The old model and its classes; its outputs are cached afresh (``OldOutputs``)."""
        self.old_model_, self.old_classes_ = model, list(classes)
        self._old_columns = cols = columns(self.old_classes_)
        self._old = OldOutputs(lambda x, t: self.old_logits(x, t)[:, cols])

    def snapshot(self, learner: LearnerView) -> None:
        """Freeze the model as it is before a new experience (nothing to keep before the first).

        Args:
            learner: what the strategy may read of the learner (its model and the classes it has seen).
        """
        if learner.seen_classes_:
            self._set_old(frozen_copy(learner.model), learner.seen_classes_)

    def old_logits(self, x: Tensor, t: Tensor) -> Tensor:
        """The old model's logits on ``x`` with task ids ``t`` (what is distilled, before the old columns are taken).

        Args:
            x: a batch of inputs, on the learner's device.
            t: their task ids.

        Returns:
            Logits over every class the old model has.
        """
        assert self.old_model_ is not None  # called only while there is an old model
        logits: Tensor = self.old_model_(x, t)
        return logits

    def batch(self, learner: LearnerView, step: Step) -> Step:
        return self.memory_.replay_into(step, round(self.ratio * step.incoming), learner.generator)

    def task_loss(self, learner: LearnerView, step: Step, logits: Tensor) -> Tensor:
        return self.replay_loss(learner, step, logits, self.weight)

    def loss(self, learner: LearnerView, step: Step, logits: Tensor) -> Tensor:
        if self.old_model_ is None:
            return logits.new_zeros(())
        old = self._old(learner, step, step.x, step.t)
        return self.alpha * distillation(logits[:, self._old_columns], old, self.temperature)

    def memory_state(self) -> dict[str, Any]:
        """The memories' part of :meth:`state_dict`.

        Returns:
            The replay memory's state (a method with more memories flattens each under its name).
        """
        return self.memory_.state_dict()

    def load_memory_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`memory_state` returned.

        Args:
            state: the strategy's state (the memories' entries and the rest).
        """
        self.memory_.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        return self.memory_state() | {"old_classes": list(self.old_classes_)} | old_model_state(self.old_model_)

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        self.load_memory_state(state)
        self._set_old(load_old_model(state, learner, Classifier.from_config), state.get("old_classes", []))
