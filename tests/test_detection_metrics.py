"""Box ops and NMS against hand-computed cases; mAP against pycocotools on random boxes."""

import contextlib
import io

import numpy as np
import pytest
import torch

from retain.metrics.boxes import batched_nms, box_iou, nms, xyxy_to_xywh
from retain.metrics.detection import Boxes, average_precision, mean_average_precision


def test_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0, 6.0, 4.0], [4.0, 4.0, 8.0, 8.0], [1.0, 1.0, 3.0, 3.0]])
    # overlap 2x4 = 8 of 16 + 16 - 8; touching corners only; inside: 4 of 16; an empty box overlaps nothing
    assert box_iou(a, b).flatten().tolist() == pytest.approx([8 / 24, 0.0, 4 / 16, 0.0, 0.0, 0.0])


def test_nms_keeps_the_best_of_each_cluster_and_not_across_labels():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.5, 0, 10.5, 10], [0, 0, 10, 10], [30, 30, 40, 40], [31, 30, 41, 40]])
    scores = torch.tensor([0.6, 0.9, 0.5, 0.4, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [1, 4]
    # IoU of boxes 1 and 0 is 9.5 / 10.5 = 0.905: a threshold above it keeps both
    assert nms(boxes, scores, 0.95).tolist() == [1, 4, 0, 3]  # 0 and 2 are the same box: IoU 1 > 0.95
    labels = torch.tensor([0, 0, 1, 0, 0])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [1, 4, 2]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


def _random_scene(rng, n_images=12, n_classes=3):
    truth, found = [], []
    for _ in range(n_images):
        n = rng.integers(0, 5)
        xy = rng.uniform(0, 80, (n, 2))
        wh = rng.uniform(4, 30, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, n_classes, n)
        # detections: jittered copies of most true boxes, some with the wrong class, plus false alarms
        keep = rng.random(n) < 0.8
        jitter = boxes[keep] + rng.normal(0, 3, (keep.sum(), 4))
        d_labels = np.where(rng.random(keep.sum()) < 0.85, labels[keep], rng.integers(0, n_classes, keep.sum()))
        m = rng.integers(0, 4)
        fxy = rng.uniform(0, 80, (m, 2))
        false = np.concatenate([fxy, fxy + rng.uniform(4, 30, (m, 2))], 1)
        d_boxes = np.concatenate([jitter, false])
        d_boxes[:, 2:] = np.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 1)
        d_labels = np.concatenate([d_labels, rng.integers(0, n_classes, m)])
        scores = rng.random(len(d_boxes)).round(2)  # rounding makes ties, which both must order the same way
        truth.append(Boxes(torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels)))
        found.append(Boxes(torch.tensor(d_boxes, dtype=torch.float32), torch.tensor(d_labels),
                           torch.tensor(scores, dtype=torch.float32)))
    return truth, found


def _coco(truth, found, n_classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (t, f) in enumerate(zip(truth, found, strict=True)):
        images.append({"id": i, "width": 120, "height": 120})
        for box, label in zip(xyxy_to_xywh(t.boxes).tolist(), t.labels.tolist(), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
        for box, label, score in zip(xyxy_to_xywh(f.boxes).tolist(), f.labels.tolist(), f.scores.tolist(),
                                     strict=True):
            results.append({"image_id": i, "category_id": label, "bbox": box, "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c} for c in range(n_classes)]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_agrees_with_pycocotools(seed):
    truth, found = _random_scene(np.random.default_rng(seed))
    coco = _coco(truth, found, 3)
    mine = mean_average_precision(found, truth)
    assert mine["map"] == pytest.approx(coco.stats[0], abs=1e-6)
    assert mine["map50"] == pytest.approx(coco.stats[1], abs=1e-6)
    assert mine["map75"] == pytest.approx(coco.stats[2], abs=1e-6)
    # per class and threshold: pycocotools' precision[T, R, K, area all, maxDets 100]
    for label in range(3):
        expected = coco.eval["precision"][:, :, label, 0, 2].mean(axis=1)
        assert average_precision(found, truth, label).numpy() == pytest.approx(expected, abs=1e-9)


def test_a_class_without_true_boxes_is_left_out():
    truth = [Boxes(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0]))]
    found = [Boxes(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0, 1]), torch.tensor([0.9, 0.8]))]
    assert average_precision(found, truth, 1) is None
    assert mean_average_precision(found, truth, labels=[0, 1])["map50"] == 1.0
    assert mean_average_precision(found, truth, labels=[1]) == {"map": None, "map50": None, "map75": None}
