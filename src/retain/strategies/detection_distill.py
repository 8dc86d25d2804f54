"""Distillation for object detectors: keep the old detector's outputs on the old classes (ILOD)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat
from torch import Tensor, nn

from retain.models.detector import Detector
from retain.strategies.base import Strategy, params
from retain.strategies.contract import ExperienceContext, LearnerView, Step
from retain.strategies.distillation import OldOutputs, frozen_copy, load_old_model, old_model_state


def _detector(learner: LearnerView) -> Detector:
    """The learner's model, a detector: the method needs one (``LearnerView`` types it as a classifier)."""
    model: nn.Module = learner.model
    assert isinstance(model, Detector)
    return model


@params
class DetectionDistill(Strategy):
    """Incremental learning of object detectors by distillation (Shmelkov, Schmid & Alahari 2017, ILOD),
    on the centre heat maps of ``retain.models.detector``.

    Before an experience the detector is frozen as the old model. During it, the heat logits of the
    classes learned before and not labelled now are pulled towards the old model's by a mean squared
    error over every cell (ILOD distils unnormalised scores with an L2 loss), and the box numbers towards
    the old ones where the old model sees an old object (weighted by its highest old-class heat); ``lam``
    weighs both. In each image the task loss covers the classes the experience labels and the old ones
    the image's boxes name (a pseudo-label, a pasted box), so an old object nobody labelled is not taught
    as background: the background shift that makes fine-tuning forget. Images a batch hook pasted into
    (``box_replay``) are run through the old model as they are trained on, not read from the cache.

    Args:
        lam: the weight of both distillation terms (heat maps and boxes).
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

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        self.kept_ = [c for c in learner.seen_classes_ if c not in ctx.classes]
        # the learner grew the head before this hook: the copy's new channels are never read (only kept_ and
        # the box numbers after its own n_classes), and a copy as wide as the model keeps the state's size fixed
        self.old_model_ = frozen_copy(_detector(learner)) if self.kept_ else None
        self._bind()

    def _bind(self) -> None:
        old = self.old_model_
        self._old = OldOutputs(lambda x, t: old(x)) if old is not None else None

    def task_loss(self, learner: LearnerView, step: Step, logits: Tensor) -> Tensor:
        if not self.kept_:
            return learner.row_loss(step, logits)
        channels = torch.arange(_detector(learner).n_classes, device=step.y.device)
        named = (step.y[..., 0, None] == channels).any(1)  # [images, classes]: the classes each image's boxes name
        row_loss: Callable[..., Tensor] = learner.row_loss  # a detection learner's, which also takes classes
        return row_loss(step, logits, named | ~torch.isin(channels, torch.tensor(self.kept_).to(channels)))

    def loss(self, learner: LearnerView, step: Step, logits: Tensor) -> Tensor:
        if self._old is None:
            return logits.new_zeros(())
        old = self._old(learner, step, step.x, step.t)
        changed = self._changed(step)
        if changed.any():
            with torch.no_grad():
                old[changed] = self._old.fn(step.x[changed], step.t[changed])
        kept = torch.tensor(self.kept_, device=logits.device)
        heat = F.mse_loss(logits[:, kept], old[:, kept])
        seen = torch.sigmoid(old[:, kept]).amax(1, keepdim=True)  # where the old model sees an old object
        assert self.old_model_ is not None  # bound with _old
        n_new, n_old = _detector(learner).n_classes, self.old_model_.n_classes
        boxes = (seen * (logits[:, n_new:n_new + 4] - old[:, n_old:n_old + 4]).abs()).sum() / seen.sum().clamp(min=1)
        return self.lam * (heat + boxes)

    @staticmethod
    def _changed(step: Step) -> torch.Tensor:
        """The incoming rows that differ from the training-set rows the old outputs are cached for."""
        changed = torch.zeros(len(step.x), dtype=torch.bool, device=step.x.device)
        if step.rows is not None:
            assert step.source is not None  # set with rows, during fit
            n, source = step.incoming, step.source[0]
            trained_from = source.index_select(0, step.rows.to(source.device)).to(step.x)
            changed[:n] = (step.x[:n] != trained_from).flatten(1).any(1)
        return changed

    def state_dict(self) -> dict[str, Any]:
        return old_model_state(self.old_model_) | ({"kept": self.kept_} if self.old_model_ is not None else {})

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        self.old_model_ = load_old_model(state, learner, lambda config: Detector(**config))
        self.kept_ = list(state.get("kept", []))
        self._bind()
