"""Detections scored: COCO-style average precision per class, mAP@0.5 and mAP@[.5:.95].

One definition, COCO's (pycocotools' ``COCOeval`` with every area and ``maxDets`` 100), written in
torch so the library does not need pycocotools to score a version; ``tests/test_detection_metrics.py``
checks it against pycocotools. Per class and IoU threshold: each image's detections, highest score
first and at most ``max_detections``, are matched greedily to the unmatched true box of that class with
the highest IoU at or above the threshold; over all images, detections in score order give a
precision–recall curve whose precision is made non-increasing and read at 101 recall points
(0, 0.01, …, 1; 0 past the highest recall reached). A class with no true box in any image has no AP
and is left out of the mean. Boxes are corners ``(x1, y1, x2, y2)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from retain.metrics.boxes import box_iou

# numpy's linspace, as pycocotools makes them: torch's rounds the upper half differently, and a recall of
# exactly k/n (0.75 of 4 true boxes) must land on the same side of a point
IOU_THRESHOLDS = tuple(np.linspace(0.5, 0.95, 10).tolist())
RECALL_POINTS = torch.from_numpy(np.linspace(0.0, 1.0, 101))


@dataclass(frozen=True)
class Boxes:
    """One image's boxes: corners ``[N, 4]``, class labels ``[N]`` and, for detections, scores ``[N]``
    (``None`` for true boxes)."""

    boxes: Tensor
    labels: Tensor
    scores: Tensor | None = None

    def of(self, label: int) -> Boxes:
        keep = self.labels == label
        return Boxes(self.boxes[keep], self.labels[keep], None if self.scores is None else self.scores[keep])


def _matches(found: Boxes, truth: Boxes, thresholds: Tensor, max_detections: int) -> tuple[Tensor, Tensor]:
    """One image and one class: the kept detections' scores and, per threshold, which of them matched
    a true box (``[len(thresholds), n]``)."""
    if found.scores is None:
        raise ValueError("detections need scores (Boxes.scores) to be ranked; only true boxes go without")
    order = torch.sort(found.scores, descending=True, stable=True).indices[:max_detections]
    scores = found.scores[order]
    matched = torch.zeros(len(thresholds), len(order), dtype=torch.bool, device=scores.device)
    if len(order) == 0 or len(truth.boxes) == 0:
        return scores, matched
    iou = box_iou(found.boxes[order].double(), truth.boxes.double())
    for t, threshold in enumerate(thresholds.tolist()):
        taken = torch.zeros(len(truth.boxes), dtype=torch.bool, device=iou.device)
        for d in range(len(order)):
            candidates = torch.where(taken, -1.0, iou[d])
            best = int(candidates.argmax())
            if candidates[best] >= min(threshold, 1 - 1e-10):
                taken[best] = True
                matched[t, d] = True
    return scores, matched


def _precision_at_recall(hits: Tensor, n_true: int) -> Tensor:
    """COCO's 101-point interpolated precision of detections in score order (``hits``: matched or not)."""
    tp = torch.cumsum(hits.double(), 0)
    fp = torch.cumsum((~hits).double(), 0)
    recall = tp / n_true
    precision = tp / (tp + fp).clamp(min=1e-300)
    precision = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])  # non-increasing
    where = torch.searchsorted(recall, RECALL_POINTS.to(recall.device), side="left")
    padded = torch.cat([precision, precision.new_zeros(1)])
    return padded[where.clamp(max=len(precision))]


def average_precision(found: Sequence[Boxes], truth: Sequence[Boxes], label: int,
                      thresholds: Sequence[float] = IOU_THRESHOLDS, max_detections: int = 100) -> Tensor | None:
    """AP of class ``label`` at each IoU threshold (``[len(thresholds)]``), or ``None`` when no image has a
    true box of it. ``found[i]`` and ``truth[i]`` are image ``i``'s detections and true boxes.

    One true box, found once exactly and once elsewhere with a higher score: half the precision at
    every recall point.

    >>> truth = [Boxes(torch.tensor([[0., 0., 10., 10.]]), torch.tensor([0]))]
    >>> found = [Boxes(torch.tensor([[50., 50., 60., 60.], [0., 0., 10., 10.]]), torch.tensor([0, 0]),
    ...                torch.tensor([0.9, 0.8]))]
    >>> average_precision(found, truth, 0, [0.5]).tolist()
    [0.5]
    """
    if len(found) != len(truth):
        raise ValueError(f"detections for {len(found)} images but true boxes for {len(truth)}")
    limits = torch.tensor(list(thresholds), dtype=torch.float64)
    scores, hits, n_true = [], [], 0
    for f, t in zip(found, truth, strict=True):
        mine = t.of(label)
        n_true += len(mine.boxes)
        s, m = _matches(f.of(label), mine, limits, max_detections)
        scores.append(s)
        hits.append(m)
    if n_true == 0:
        return None
    all_scores = torch.cat(scores)
    order = torch.sort(all_scores, descending=True, stable=True).indices
    matched = torch.cat(hits, dim=1)[:, order]
    return torch.stack([_precision_at_recall(matched[t], n_true).mean() for t in range(len(limits))])


def mean_average_precision(found: Sequence[Boxes], truth: Sequence[Boxes], labels: Iterable[int] | None = None,
                           max_detections: int = 100) -> dict[str, float | None]:
    """``{"map": mAP@[.5:.95], "map50": mAP@0.5, "map75": mAP@0.75}`` over ``labels`` (default: every
    label with a true box); ``None`` when none of them has a true box.

    Class 0 found exactly; class 1's box is too tall (IoU 100/140 = 0.71: found at 5 of the 10 thresholds).

    >>> truth = [Boxes(torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.]]), torch.tensor([0, 1]))]
    >>> found = [Boxes(torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 34.]]), torch.tensor([0, 1]),
    ...                torch.tensor([0.9, 0.8]))]
    >>> {k: round(v, 3) for k, v in mean_average_precision(found, truth).items()}
    {'map': 0.75, 'map50': 1.0, 'map75': 0.5}
    """
    if labels is None:
        labels = sorted({int(v) for t in truth for v in t.labels.tolist()})
    per_class = [ap for label in labels
                 if (ap := average_precision(found, truth, label, IOU_THRESHOLDS, max_detections)) is not None]
    if not per_class:
        return {"map": None, "map50": None, "map75": None}
    table = torch.stack(per_class)  # [classes, thresholds]
    return {"map": float(table.mean()), "map50": float(table[:, 0].mean()), "map75": float(table[:, 5].mean())}


def box_f1(found: Boxes, truth: Boxes, iou_threshold: float = 0.5) -> float:
    """How right one image's detections are, as one number: the F1 of precision and recall when each
    detection, highest score first, takes the unmatched true box of its class it overlaps most (IoU at
    least ``iou_threshold``). No detection and no true box: 1. A detector's row score (a paired bootstrap
    resamples images by it) and the live score of a served answer against the boxes feedback sends.

    >>> truth = Boxes(torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.]]), torch.tensor([0, 1]))
    >>> box_f1(Boxes(truth.boxes[:1], truth.labels[:1], torch.tensor([0.9])), truth)  # precision 1, recall 1/2
    0.6666666666666666
    >>> box_f1(Boxes(truth.boxes, torch.tensor([1, 1]), torch.tensor([0.9, 0.8])), truth)  # one of the classes wrong
    0.5
    """
    if not len(found.boxes) and not len(truth.boxes):
        return 1.0
    hits, at = 0, torch.tensor([iou_threshold], dtype=torch.float64)
    for label in torch.unique(found.labels).tolist():
        scores = found.scores if found.scores is not None else torch.ones(len(found.labels), device=found.labels.device)
        mine = Boxes(found.boxes, found.labels, scores).of(label)
        _, matched = _matches(mine, truth.of(label), at, len(mine.boxes))
        hits += int(matched.sum())
    return 2 * hits / (len(found.boxes) + len(truth.boxes))
