"""The learner of an object detector: continual training on images with boxes, with strategies.

Rows are images ``[3, H, W]`` and packed targets ``[M, 5]`` (label and corners per box, padded:
``retain.data.scenes.pack``), all of one shape, so the row learner's fit, step, guard and the strategies
that need no class logits (replay, L2, EWC, weight averaging, joint) apply as they are, beside those
written for detection (``detection_distill``, ``pseudo_labels``, ``box_replay``). This class says how a
batch becomes outputs, what the task loss is (CenterNet's, ``retain.models.detector``), how the head
grows with an experience's classes, how images are detected, and how the learner is saved
(``retain.engine.persist``, kind ``detection``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from retain.data import Experience
from retain.data.scenes import PAD
from retain.engine.rows import RowLearner, check_strategy
from retain.metrics.detection import Boxes
from retain.models.detector import Detector, detect
from retain.strategies import Strategy
from retain.strategies.contract import Step
from retain.util import evaluating


def applies_to_detection(cls: type[Strategy]) -> bool:
    """Whether a strategy runs on a detector: one written for it, or one that needs no class logits."""
    return cls.detection or cls.generative


class DetectionLearner(RowLearner[Detector]):
    """Trains a :class:`~retain.models.detector.Detector` experience by experience.

    ``fit(experience)`` trains on its rows (``x_train`` images, ``y_train`` packed boxes), growing the
    head to the highest class it labels; :meth:`detect` finds boxes in images. The heat maps of every
    class learned so far are in the task loss: a class an experience does not label is background
    wherever it appears (fine-tuning's background shift), unless a strategy says otherwise.

    >>> from retain.models.detector import Detector
    >>> learner = DetectionLearner(Detector("tiny"), batch_size=2)
    >>> x = torch.rand(2, 3, 32, 32)
    >>> y = torch.tensor([[[1., 4., 4., 20., 20.]], [[0., 8., 8., 24., 16.]]])
    >>> learner.fit(Experience(x, y, x[:0], y[:0], classes=(0, 1))).seen_classes_, learner.model.n_classes
    ([0, 1], 2)
    >>> [type(b).__name__ for b in learner.detect(x)]
    ['Boxes', 'Boxes']
    """

    kind = "detection"

    def __init__(self, model: Detector, strategies: Sequence[Strategy] = (), *, lr: float = 1e-3,
                 epochs: int = 1, batch_size: int = 16, clip: float = 10.0, max_boxes: int = 24, seed: int = 0,
                 device: str = "cpu") -> None:
        for s in strategies:
            check_strategy(s, applies_to_detection, "a detector")
        super().__init__(model, strategies, lr=lr, epochs=epochs, batch_size=batch_size, clip=clip, seed=seed,
                         device=device)
        self.max_boxes = max_boxes

    def fit(self, experience: Experience, progress: bool = False) -> DetectionLearner:
        """Train on one experience; its targets are widened to ``max_boxes`` rows an image, so rows of every
        experience mix (a replay memory's) and strategies have free rows to add boxes to (pseudo-labels,
        pasted boxes). An image with more boxes is refused, naming it."""
        return super().fit(self._widened(experience), progress)

    def _widened(self, experience: Experience) -> Experience:
        y = experience.y_train
        counts = (y[..., 0] != PAD).sum(1) if len(y) else torch.zeros(0)
        if len(counts) and int(counts.max()) > self.max_boxes:
            i = int(counts.argmax())
            raise ValueError(f"image {i} of experience {experience.id} has {int(counts[i])} boxes, max_boxes is "
                             f"{self.max_boxes}: raise it")
        if y.shape[1] == self.max_boxes:
            return experience
        wide = torch.zeros(len(y), self.max_boxes, 5)
        wide[:, :, 0] = PAD
        if y.shape[1] > self.max_boxes:  # every image's real boxes fit: put them first and cut padding only
            first = (y[..., 0] == PAD).to(torch.uint8).argsort(dim=1, stable=True)
            y = y.gather(1, first[..., None].expand(-1, -1, y.shape[2]))[:, :self.max_boxes]
        wide[:, :y.shape[1]] = y
        return dataclasses.replace(experience, y_train=wide)

    def _begin(self, experience: Experience) -> list[int]:
        """Grow the head to the experience's classes (those it declares and those its boxes name)."""
        labels = experience.y_train[..., 0]
        classes = sorted(set(experience.classes) | {int(c) for c in torch.unique(labels[labels != PAD])})
        if classes:
            self.model.add_classes(max(max(classes) + 1, self.model.n_classes))
        return classes

    def _end(self, classes: list[int]) -> None:
        self.seen_classes_ = sorted(set(self.seen_classes_) | set(classes))
        self.task_classes_ = {0: list(self.seen_classes_)}  # one task: every class in every image

    def _loaded(self, meta: Any) -> None:
        self.task_classes_ = {0: list(self.seen_classes_)}

    def _logits(self, step: Step) -> Tensor:
        step.x, step.y, step.t = step.x.to(self.device), step.y.to(self.device), step.t.to(self.device)
        outputs: Tensor = self.model(step.x)
        return outputs

    def row_loss(self, step: Step, logits: Tensor, classes: Tensor | None = None) -> Tensor:
        """The task loss: CenterNet's (focal loss on the heat maps ``classes`` marks for each image,
        ``[images, n_classes]`` bool, every learned class by default, and L1 on the boxes) against the
        step's boxes."""
        return self.model.loss(logits, step.y, classes=None if classes is None else classes.to(logits.device))

    @torch.no_grad()
    def outputs(self, images: Tensor, batch_size: int = 32) -> Tensor:
        """The model's raw outputs on ``images`` (evaluation mode), in batches."""
        with evaluating(self.model):
            return torch.cat([self.model(images[i:i + batch_size].to(self.device)).cpu()
                              for i in range(0, len(images), batch_size)])

    def detect(self, images: Tensor, batch_size: int = 32, min_score: float = 0.01, top: int = 100) -> list[Boxes]:
        """Each image's boxes, classes and scores (``retain.models.detector.detect``)."""
        return detect(self.outputs(images, batch_size), self.model.n_classes, top=top, min_score=min_score)

    def _settings(self) -> dict[str, Any]:
        return super()._settings() | {"max_boxes": self.max_boxes}

    @classmethod
    def _saved_names(cls, model: Detector) -> set[str]:
        """All weights but a frozen pretrained backbone's (its package holds them; a frozen random one is saved)."""
        packaged = model.pretrained and not model.train_backbone
        frozen = {f"backbone.{k}" for k in model.backbone.state_dict()} if packaged else set()
        return set(model.state_dict()) - frozen

    @classmethod
    def _model_of(cls, meta: Any) -> Detector:
        return Detector(**meta.model.model_dump())
