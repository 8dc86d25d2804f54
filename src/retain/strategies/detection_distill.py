"""Distillation for object detectors: keep the old detector's outputs on the old classes (ILOD)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat

from retain.models.detector import Detector
from retain.strategies.base import Strategy, params
from retain.strategies.distillation import OldOutputs, frozen_copy, load_old_model, old_model_state


@params
class DetectionDistill(Strategy):
    """Incremental learning of object detectors by distillation (Shmelkov, Schmid & Alahari 2017, ILOD),
    on the centre heat maps of ``retain.models.detector``.

    Before an experience the detector is frozen as the old model. During it, the heat logits of the
    classes learned before and not labelled now are pulled towards the old model's by a mean squared
    error over every cell (ILOD distils unnormalised scores with an L2 loss), and the box numbers towards
    the old ones where the old model sees an old object (weighted by its highest old-class heat); ``lam``
    weighs both. The task loss covers only the classes the experience labels, so an old object nobody
    labelled is not taught as background: the background shift that makes fine-tuning forget.
    """

    lam: NonNegativeFloat = 1.0

    name = "detection_distill"
    paper = ('Shmelkov, Schmid & Alahari 2017, "Incremental Learning of Object Detectors without Catastrophic '
             'Forgetting", ICCV')
    family = "regularization"
    detection = True
    needs = ("detector",)
    scenarios = ("class_incremental", "domain_incremental")
    tunable = {"lam": {"low": 0.1, "high": 10.0, "log": True}}

    def __post_init__(self) -> None:
        self.old_model_: Detector | None = None
        self.kept_: list[int] = []  # the old classes distilled in this experience

    def before_experience(self, learner, ctx) -> None:
        self.kept_ = [c for c in learner.seen_classes_ if c not in ctx.classes]
        self.old_model_ = frozen_copy(learner.model) if self.kept_ else None
        self._bind()

    def _bind(self) -> None:
        old = self.old_model_
        self._old = OldOutputs(lambda x, t: old(x)) if old is not None else None

    def task_loss(self, learner, step, logits):
        if not self.kept_:
            return learner.row_loss(step, logits)
        labelled = [c for c in range(learner.model.n_classes) if c not in self.kept_]
        return learner.row_loss(step, logits, labelled)

    def loss(self, learner, step, logits):
        if self._old is None:
            return logits.new_zeros(())
        old = self._old(learner, step, step.x, step.t)
        kept = torch.tensor(self.kept_, device=logits.device)
        heat = F.mse_loss(logits[:, kept], old[:, kept])
        seen = torch.sigmoid(old[:, kept]).amax(1, keepdim=True)  # where the old model sees an old object
        n_new, n_old = learner.model.n_classes, self.old_model_.n_classes
        boxes = (seen * (logits[:, n_new:n_new + 4] - old[:, n_old:n_old + 4]).abs()).sum() / seen.sum().clamp(min=1)
        return self.lam * (heat + boxes)

    def state_dict(self) -> dict[str, Any]:
        return old_model_state(self.old_model_) | ({"kept": self.kept_} if self.old_model_ is not None else {})

    def load_state_dict(self, state, learner) -> None:
        self.old_model_ = load_old_model(state, learner, lambda config: Detector(**config))
        self.kept_ = list(state.get("kept", []))
        self._bind()
