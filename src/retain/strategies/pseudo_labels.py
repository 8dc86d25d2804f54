"""Pseudo-labels for object detectors: the old detector labels the old objects in new images."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from retain.data.scenes import PAD
from retain.metrics.boxes import box_iou
from retain.models.detector import Detector, detect
from retain.strategies.base import Strategy, params
from retain.strategies.contract import ExperienceContext, LearnerView
from retain.util import evaluating


@params
class PseudoLabels(Strategy):
    """Pseudo-labelling old classes (as in PseDet, Wang et al. 2025, and the incremental detectors before
    it): before an experience, the detector as it stands finds objects of the classes it learned before
    and the experience does not label; those found with a score of at least ``min_score``, and not on an
    object the experience labels (IoU above ``max_overlap``), are added to the training images' boxes as
    if they had been labelled. The new classes are then learned beside the old ones rather than against
    them. An image with no free box row keeps what it has. ``added_`` counts the boxes added per class
    in the latest experience (what the old model still found).

    Args:
        min_score: the least score a found object needs to be added, strictly between 0 and 1.
        max_overlap: the highest IoU a found object may have with a labelled one, 0-1.
    """

    min_score: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.4
    max_overlap: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5

    name = "pseudo_labels"
    paper = ('Wang et al. 2025, "PseDet: Revisiting the Power of Pseudo Label in Incremental Object Detection", '
             'ICLR')
    family = "regularization"
    detection = True
    needs = ("detector",)
    replaces_train_set = True
    scenarios = ("class_incremental", "domain_incremental")
    tunable = {"min_score": {"low": 0.2, "high": 0.7}}

    def __post_init__(self) -> None:
        self.added_ = torch.zeros(0, dtype=torch.long)

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        old = [c for c in learner.seen_classes_ if c not in ctx.classes]
        model: nn.Module = learner.model
        assert isinstance(model, Detector)  # the method needs one; LearnerView types it as a classifier
        self.added_ = torch.zeros(model.n_classes, dtype=torch.long)
        if not old:
            return
        x, y, t = ctx.train_set
        y = y.clone()
        size = learner.bulk_size
        with evaluating(model), torch.no_grad():
            outputs = torch.cat([model(x[i:i + size].to(learner.device)).cpu() for i in range(0, len(x), size)])
        for i, found in enumerate(detect(outputs, model.n_classes, min_score=self.min_score)):
            keep = torch.isin(found.labels, torch.tensor(old))
            boxes, labels = found.boxes[keep], found.labels[keep]
            real = y[i, :, 0] != PAD
            if real.any() and len(boxes):
                free = box_iou(boxes, y[i, real, 1:]).amax(1) <= self.max_overlap
                boxes, labels = boxes[free], labels[free]
            slots = (~real).nonzero()[:, 0][:len(boxes)]
            y[i, slots, 0] = labels[:len(slots)].float()
            y[i, slots, 1:] = boxes[:len(slots)]
            self.added_ += torch.bincount(labels[:len(slots)], minlength=len(self.added_))
        ctx.replace_train_set(x, y, t)

    def state_dict(self) -> dict[str, Any]:
        return {"added": self.added_}

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        self.added_ = state.get("added", torch.zeros(0, dtype=torch.long))
