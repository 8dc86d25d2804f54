"""Learning without Forgetting: keep the old model's outputs on new data."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import NonNegativeFloat, PositiveFloat
from torch import Tensor

from retain.models import Classifier, MultiHead
from retain.strategies.base import Strategy, params
from retain.strategies.contract import ExperienceContext, LearnerView, Step
from retain.strategies.distillation import (
    OldOutputs,
    columns,
    distillation,
    frozen_copy,
    load_old_model,
    old_model_state,
)


@params
class LwF(Strategy):
    """Learning without Forgetting (Li & Hoiem 2017, TPAMI).

    Before each new experience the current model is frozen; training then adds
    ``alpha * T^2 * KL(old || new)`` on the old classes' softened outputs (temperature ``T``)
    for the new inputs. With per-task heads each old task's head is distilled on its own.

    Args:
        alpha: the distillation term's weight.
        temperature: the softmax temperature ``T``.
    """

    alpha: NonNegativeFloat = 1.0
    temperature: PositiveFloat = 2.0

    name = "lwf"
    paper = 'Li & Hoiem 2017, "Learning without Forgetting", TPAMI'
    family = "regularization"
    tunable = {"alpha": {"low": 0.1, "high": 10.0, "log": True}, "temperature": {"low": 1.0, "high": 4.0}}

    def __post_init__(self) -> None:
        self.old_model_: Classifier | None = None
        self.old_tasks_: dict[int, list[int]] = {}

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        if not learner.seen_classes_:
            return
        self.old_model_ = frozen_copy(learner.model)
        self.old_tasks_ = {k: list(v) for k, v in learner.task_classes_.items()}
        self._set_outputs(learner.seen_classes_)

    def _set_outputs(self, old_classes: list[int]) -> None:
        self._old_columns = columns(old_classes)
        old, cols = self.old_model_, self._old_columns
        assert old is not None
        # per-task heads distil each old task's head on the old features; one head, its old columns
        self._old = OldOutputs((lambda x, t: old.features(x)) if isinstance(old.head, MultiHead)
                               else (lambda x, t: old(x, t)[:, cols]))

    def loss(self, learner: LearnerView, step: Step, logits: Tensor) -> Tensor:
        if self.old_model_ is None:
            return logits.new_zeros(())
        model, x, t = learner.model, step.x, step.t
        if not isinstance(model.head, MultiHead):
            old = self._old(learner, step, x, t)
            return self.alpha * distillation(logits[:, self._old_columns], old, self.temperature)
        h = model.features(x)
        h_old = self._old(learner, step, x, t)
        total = logits.new_zeros(())
        for task, classes in self.old_tasks_.items():
            tt = torch.full_like(t, task)
            total = total + distillation(
                model.head(h, tt)[:, classes],
                self.old_model_.head(h_old, tt)[:, classes].detach(),
                self.temperature,
            )
        return self.alpha * total

    def state_dict(self) -> dict[str, Any]:
        return old_model_state(self.old_model_) | {"tasks": self.old_tasks_}

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        self.old_model_ = load_old_model(state, learner, Classifier.from_config)
        self.old_tasks_ = {int(k): v for k, v in state.get("tasks", {}).items()}
        if self.old_model_ is not None:
            self._set_outputs(sorted({c for cs in self.old_tasks_.values() for c in cs}))
