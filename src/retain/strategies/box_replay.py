"""Box replay for object detectors: old objects cut from earlier images, pasted into new ones (ABR)."""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor

from retain.data.scenes import PAD
from retain.metrics.boxes import box_area
from retain.strategies.base import Strategy, params
from retain.strategies.contract import ExperienceContext, LearnerView, Step

SIDE = 48  # a stored crop's side in pixels (it is scaled back to its box's size when pasted)


@params
class BoxReplay(Strategy):
    """Augmented box replay (Liu et al. 2023, ABR), in its copy-paste form: after each experience a
    class-balanced memory keeps up to ``memory_size`` labelled boxes cut from its images (the crop, its
    size, its class), in place of whole images; each training image then gets up to ``per_image`` of them
    pasted at free places (covering no more than ``max_overlap`` of any of its labelled boxes), labelled. Old classes
    keep appearing as foreground in new scenes, at a fraction of the memory whole images take (a 48-pixel
    crop is a seventh of a 128-pixel scene). ABR's mixup and mosaic of boxes are left out.

    Args:
        memory_size: the most boxes kept.
        per_image: the most boxes pasted into a training image, 1-8.
        max_overlap: the largest share of a labelled box a pasted one may cover, 0-1.
    """

    memory_size: PositiveInt = 200
    per_image: Annotated[int, Field(ge=1, le=8)] = 2
    max_overlap: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3

    name = "box_replay"
    paper = ('Liu et al. 2023, "Augmented Box Replay: Overcoming Foreground Shift for Incremental Object '
             'Detection", ICCV')
    family = "replay"
    detection = True
    needs = ("detector",)
    scenarios = ("class_incremental", "domain_incremental")
    tunable = {"per_image": {"low": 1, "high": 4}}  # a memory's size is fixed: a deployment keeps what it stored

    def __post_init__(self) -> None:
        self.crops_ = torch.zeros(0, 3, SIDE, SIDE)
        self.sizes_ = torch.zeros(0, 2)  # each crop's box (width, height) in pixels
        self.labels_ = torch.zeros(0, dtype=torch.long)

    def batch(self, learner: LearnerView, step: Step) -> Step:
        if not len(self.labels_):
            return step
        g = learner.generator
        x, y = step.x[:step.incoming].clone(), step.y[:step.incoming].clone()
        height, width = x.shape[-2:]
        for i in range(len(x)):
            for k in torch.randint(len(self.labels_), (self.per_image,), generator=g).tolist():
                free = (y[i, :, 0] == PAD).nonzero()[:, 0]
                if not len(free):
                    break
                w, h = int(self.sizes_[k, 0].clamp(max=width)), int(self.sizes_[k, 1].clamp(max=height))
                if w < 2 or h < 2:
                    continue
                x0 = int(torch.randint(width - w + 1, (1,), generator=g))
                y0 = int(torch.randint(height - h + 1, (1,), generator=g))
                box = torch.tensor([[x0, y0, x0 + w, y0 + h]], dtype=y.dtype, device=y.device)
                if self._hides(box, y[i]):
                    continue  # no second try: the image simply gets fewer boxes
                crop = F.interpolate(self.crops_[k:k + 1], size=(h, w), mode="bilinear", align_corners=False)[0]
                x[i, :, y0:y0 + h, x0:x0 + w] = crop.to(x)
                y[i, free[0], 0] = float(self.labels_[k])
                y[i, free[0], 1:] = box[0]
        step.x = torch.cat([x, step.x[step.incoming:]])
        step.y = torch.cat([y, step.y[step.incoming:]])
        return step

    def _hides(self, box: Tensor, targets: Tensor) -> bool:
        """Whether ``box`` covers more than ``max_overlap`` of one of the labelled boxes in ``targets`` (a
        share of that box, not IoU: a large crop over a small object hides it whatever the union)."""
        labelled = targets[targets[:, 0] != PAD, 1:]
        if not len(labelled):
            return False
        corners = torch.cat([torch.maximum(box[:, :2], labelled[:, :2]), torch.minimum(box[:, 2:], labelled[:, 2:])], 1)
        return bool((box_area(corners) > self.max_overlap * box_area(labelled)).any())

    def after_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        x, y, _ = ctx.train_set
        crops, sizes, labels = [self.crops_], [self.sizes_], [self.labels_]
        for c in ctx.classes:  # the experience's own labelled boxes (not a pseudo-label of an old class)
            images, slots = (y[:, :, 0] == c).nonzero(as_tuple=True)
            for i, s in zip(images.tolist(), slots.tolist(), strict=True):
                x1, y1, x2, y2 = (int(round(v)) for v in y[i, s, 1:].tolist())
                if x2 - x1 < 2 or y2 - y1 < 2:
                    continue
                patch = x[i:i + 1, :, y1:y2, x1:x2].float()
                crops.append(F.interpolate(patch, size=(SIDE, SIDE), mode="bilinear", align_corners=False))
                sizes.append(torch.tensor([[x2 - x1, y2 - y1]], dtype=torch.float32))
                labels.append(torch.tensor([c]))
        self._keep(torch.cat(crops), torch.cat(sizes), torch.cat(labels), learner.generator)

    def _keep(self, crops: Tensor, sizes: Tensor, labels: Tensor, g: torch.Generator) -> None:
        """A random, class-balanced ``memory_size`` of the boxes (each class an equal share, its own
        boxes permitting; what a class leaves unused goes to the others)."""
        order = torch.randperm(len(labels), generator=g)
        classes = torch.unique(labels).tolist()
        chosen: list[int] = []
        quota = self.memory_size // max(len(classes), 1)
        for c in classes:
            chosen += [int(i) for i in order[labels[order] == c][:quota]]
        taken = set(chosen)
        rest = [int(i) for i in order if int(i) not in taken]
        chosen += rest[:self.memory_size - len(chosen)]
        keep = torch.tensor(sorted(chosen), dtype=torch.long)
        self.crops_, self.sizes_, self.labels_ = crops[keep], sizes[keep], labels[keep]

    def state_dict(self) -> dict[str, Any]:
        return {"crops": self.crops_, "sizes": self.sizes_, "labels": self.labels_}

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        self.crops_ = state.get("crops", torch.zeros(0, 3, SIDE, SIDE))
        self.sizes_ = state.get("sizes", torch.zeros(0, 2))
        self.labels_ = state.get("labels", torch.zeros(0, dtype=torch.long))
