"""Shared base of the replay methods that also distil the old model (iCaRL, BiC)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

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
    old_model_: torch.nn.Module | None = None
    old_classes_: tuple[int, ...] | list[int] = ()

    def _set_old(self, model: torch.nn.Module | None, classes: list[int]) -> None:
        """The old model and its classes; its outputs are cached afresh (``OldOutputs``)."""
        self.old_model_, self.old_classes_ = model, list(classes)
        self._old_columns = cols = columns(self.old_classes_)
        self._old = OldOutputs(lambda x, t: self.old_logits(x, t)[:, cols])

    def snapshot(self, learner) -> None:
        """Freeze the model as it is before a new experience (nothing to keep before the first)."""
        if learner.seen_classes_:
            self._set_old(frozen_copy(learner.model), learner.seen_classes_)

    def old_logits(self, x: Tensor, t: Tensor) -> Tensor:
        return self.old_model_(x, t)

    def batch(self, learner, step):
        return self.memory_.replay_into(step, round(self.ratio * step.incoming), learner.generator)

    def task_loss(self, learner, step, logits):
        return self.replay_loss(learner, step, logits, self.weight)

    def loss(self, learner, step, logits):
        if self.old_model_ is None:
            return logits.new_zeros(())
        old = self._old(learner, step, step.x, step.t)
        return self.alpha * distillation(logits[:, self._old_columns], old, self.temperature)

    def memory_state(self) -> dict[str, Any]:
        return self.memory_.state_dict()

    def load_memory_state(self, state: dict[str, Any]) -> None:
        self.memory_.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        return self.memory_state() | {"old_classes": list(self.old_classes_)} | old_model_state(self.old_model_)

    def load_state_dict(self, state: dict[str, Any], learner) -> None:
        self.load_memory_state(state)
        self._set_old(load_old_model(state, learner), state.get("old_classes", []))
