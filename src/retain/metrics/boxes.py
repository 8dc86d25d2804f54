"""Boxes in torch: conversions, areas, pairwise IoU and non-maximum suppression.

torchvision's box ops cannot be used here (its wheels are CUDA builds that do not load with the CPU
torch), so the few a detector needs are written out. Boxes are ``[N, 4]`` float tensors of corners
``(x1, y1, x2, y2)`` in pixels unless a name says ``xywh`` (COCO's corner, width and height).
"""

from __future__ import annotations

import torch
from torch import Tensor


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """COCO's ``(x, y, w, h)`` as corners.

    >>> xywh_to_xyxy(torch.tensor([[10., 20., 5., 8.]])).tolist()
    [[10.0, 20.0, 15.0, 28.0]]
    """
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """Corners as COCO's ``(x, y, w, h)``.

    >>> xyxy_to_xywh(torch.tensor([[10., 20., 15., 28.]])).tolist()
    [[10.0, 20.0, 5.0, 8.0]]
    """
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


def box_area(boxes: Tensor) -> Tensor:
    """Each box's area (0 for a box whose corners are swapped).

    >>> box_area(torch.tensor([[0., 0., 2., 3.], [5., 5., 4., 9.]])).tolist()
    [6.0, 0.0]
    """
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every box of ``a`` with every box of ``b``: ``[len(a), len(b)]``;
    0 where both boxes are empty.

    >>> box_iou(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 1., 3., 3.], [0., 0., 2., 2.]])).tolist()
    [[0.1428571492433548, 1.0]]
    """
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, highest score first: a box is
    dropped when it overlaps a kept, higher-scoring box by IoU above ``iou_threshold``. Equal scores
    keep their input order.

    >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.]])
    >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
    [0, 2]
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    if len(order) == 0:
        return order
    overlaps = box_iou(boxes[order], boxes[order]) > iou_threshold
    keep = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    for i in range(len(order)):  # a kept box silences the later ones it overlaps; at most a few hundred boxes
        if keep[i]:
            keep[i + 1:] &= ~overlaps[i, i + 1:]
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """:func:`nms` within each label: boxes of different labels never suppress each other. Each label's
    boxes are moved apart by more than any box's extent, so one pass serves all labels.

    >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [1., 1., 11., 11.]])
    >>> batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 1]), 0.5).tolist()
    [0, 2]
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = labels.to(boxes) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset[:, None], scores, iou_threshold)
