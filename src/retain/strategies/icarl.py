"""iCaRL: herding exemplars, distillation, and a nearest-mean-of-exemplars classifier."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from retain.models import NMEHead
from retain.strategies.base import Strategy, params
from retain.strategies.importance import distillation, frozen_copy, load_old_model, old_model_state
from retain.strategies.memory import Memory


@params
class ICaRL(Strategy):
    """iCaRL (Rebuffi, Kolesnikov, Sperl & Lampert 2017, CVPR).

    Exemplars are chosen by herding (their feature mean tracks the class mean) and replayed
    beside new data (``ratio`` per new sample); old classes' outputs are distilled from the
    model frozen before the experience; predictions come from the nearest mean of exemplars
    in normalised feature space (:class:`~retain.models.NMEHead`), which is immune to the
    output layer's bias towards new classes. Distillation uses softened softmax (``T``) as in
    later reimplementations, not the paper's sigmoids.
    """

    memory_size: PositiveInt = 200
    ratio: PositiveFloat = 2.0
    alpha: NonNegativeFloat = 1.0
    temperature: PositiveFloat = 2.0

    name = "icarl"
    paper = 'Rebuffi et al. 2017, "iCaRL: Incremental Classifier and Representation Learning", CVPR'
    family = "replay"
    scenarios = ("class_incremental",)

    def __post_init__(self) -> None:
        self.memory_ = Memory(self.memory_size, "herding")
        self.old_model_: torch.nn.Module | None = None
        self.old_classes_: list[int] = []

    def before_experience(self, learner, exp) -> None:
        model = learner.model
        if not isinstance(model.head, NMEHead):
            model.head = NMEHead(model.head.in_features, model.head).to(learner.device)
        if learner.seen_classes_:
            self.old_model_ = frozen_copy(model)
            self.old_classes_ = list(learner.seen_classes_)

    def batch(self, learner, x, y, t):
        return self.memory_.extend(x, y, t, round(self.ratio * len(y)), learner.generator)

    def loss(self, learner, x, y, t, logits):
        if self.old_model_ is None:
            return logits.new_zeros(())
        self.old_model_.head.inner.eval()
        with torch.no_grad():
            old = self.old_model_.head.inner(self.old_model_.features(x, t), t)[:, self.old_classes_]
        return self.alpha * distillation(logits[:, self.old_classes_], old, self.temperature)

    def after_experience(self, learner, exp) -> None:
        features = learner.features(exp.x_train, exp.train_tasks())
        self.memory_.add(exp.x_train, exp.y_train, exp.train_tasks(), exp.id,
                         generator=learner.generator, features=features)
        head = learner.model.head
        f = F.normalize(learner.features(self.memory_.x, self.memory_.t), dim=1)
        means = torch.zeros(head.n_outputs, f.shape[1])
        has = torch.zeros(head.n_outputs, dtype=torch.bool)
        for c in self.memory_.y.unique().tolist():
            means[c] = F.normalize(f[self.memory_.y == c].mean(0), dim=0)
            has[c] = True
        head.set_means(means, has)

    def state_dict(self) -> dict[str, Any]:
        state = self.memory_.state_dict() | {"old_classes": self.old_classes_}
        return state | old_model_state(self.old_model_)

    def load_state_dict(self, state, learner) -> None:
        self.memory_.load_state_dict(state)
        self.old_classes_ = list(state.get("old_classes", []))
        self.old_model_ = load_old_model(state, learner)
