"""Dynamic architecture: a classifier head that grows when new classes appear."""

from __future__ import annotations

import torch
from torch import nn

from retain.models import IncrementalHead, LinearHead
from retain.strategies.base import Strategy, params
from retain.strategies.contract import ExperienceContext, LearnerView


@params
class GrowingHead(Strategy):
    """Add one output unit per new class before training on it, copying the old units so the
    logits of known classes are untouched (the expanding classifier of iCaRL, Rebuffi et al.
    2017, and Avalanche's ``IncrementalClassifier``). Unseen classes get no unit, so they
    cannot steal probability mass before they exist. Put it first in a strategy list.
    """

    name = "growing_head"
    paper = "Rebuffi et al. 2017 (iCaRL's expanding classifier)"
    family = "architecture"

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        with learner.seeded():
            self._grow(learner, ctx.classes)

    def _grow(self, learner: LearnerView, classes: tuple[int, ...]) -> None:
        model = learner.model
        if isinstance(model.head, LinearHead):
            # Take over a fixed head, keeping only the units of classes already learned.
            fixed = model.head
            keep = max(learner.seen_classes_) + 1 if learner.seen_classes_ else 0
            model.head = IncrementalHead(fixed.in_features, keep).to(learner.device)
            if keep:
                block = model.head.blocks[0]
                assert isinstance(block, nn.Linear)
                with torch.no_grad():
                    block.weight.copy_(fixed.fc.weight[:keep])
                    block.bias.copy_(fixed.fc.bias[:keep])
        if not isinstance(model.head, IncrementalHead):
            raise ValueError(f"growing_head needs a linear head, the model has {type(model.head).__name__}")
        model.head.grow(max(classes) + 1)
