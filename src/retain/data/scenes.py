"""Scenes with exact boxes for detection: Fashion-MNIST garments pasted on textured backgrounds, and the
class-incremental stream whose experiences label only their new classes.

No Debian package ships photographs with boxes, so scenes are composed: each object is a Fashion-MNIST
item (training scenes take items from its training split, test scenes from its test split: a test object
was never seen in training), scaled to a random size, tinted a random colour and pasted at a random
place; its box is the tight box of the pixels it covers (exact, not annotated). Backgrounds are smooth
colour noise with fine grain, so the detector cannot find objects by colour or flatness alone. Objects
may overlap, but no more than ``MAX_OVERLAP`` of the smaller one is covered, so every box still shows
most of its object. Everything is drawn from one seed; a generated stream is cached as safetensors.

The class-incremental stream has the background shift of real incremental detection: an experience's
scenes also hold objects of earlier classes, unlabelled, so a naive update learns that old objects are
background. Test scenes hold every class and label every object.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from retain.data.base import cache_dir
from retain.data.datasets import FASHION_CLASSES, fashion_mnist

MAX_OVERLAP = 0.35  # the largest share of the smaller of two objects' boxes the other may cover
SIZES = (22, 52)  # an object's side in pixels on a 128-pixel scene, before its empty margin is cut off
PAD = -1  # the label of an unused row of a packed target


@dataclass(frozen=True, eq=False)  # eq=False: tensors do not compare to one truth value
class Scene:
    """One image ``[3, H, W]`` in 0..1 and its labelled boxes: corners ``[n, 4]`` in pixels and labels ``[n]``."""

    image: Tensor
    boxes: Tensor
    labels: Tensor


    def only(self, classes: Sequence[int]) -> Scene:
        """The scene with only the boxes of ``classes`` labelled (the others stay in the picture)."""
        keep = torch.isin(self.labels, torch.tensor(list(classes), dtype=torch.long))
        return Scene(self.image, self.boxes[keep], self.labels[keep])


@dataclass
class DetectionExperience:
    """One experience: the classes it brings and its training scenes, every object labelled (``scenes``:
    what retraining on fully labelled data sees) or only its own classes (``train``: what it brings)."""

    name: str
    classes: tuple[int, ...]
    scenes: list[Scene]

    @property
    def train(self) -> list[Scene]:
        return [s.only(self.classes) for s in self.scenes]


@dataclass
class DetectionStream:
    """Experiences in order, the test scenes (every class labelled) and the class names."""

    experiences: list[DetectionExperience]
    test: list[Scene]
    class_names: tuple[str, ...]


def pack(scenes: Sequence[Scene], width: int = 1) -> tuple[Tensor, Tensor]:
    """Scenes as two tensors: images ``[N, 3, H, W]`` and targets ``[N, M, 5]`` (label, x1, y1, x2, y2; rows
    past an image's boxes have label ``PAD``), the rows a learner trains on. ``M`` is the most boxes an
    image has, or ``width`` if that is more (rows of one width can be mixed: a replay memory's).

    >>> s = Scene(torch.zeros(3, 8, 8), torch.tensor([[1., 1., 4., 4.]]), torch.tensor([2]))
    >>> x, y = pack([s, Scene(s.image, s.boxes[:0], s.labels[:0])])
    >>> x.shape, y.tolist()
    (torch.Size([2, 3, 8, 8]), [[[2.0, 1.0, 1.0, 4.0, 4.0]], [[-1.0, 0.0, 0.0, 0.0, 0.0]]])
    """
    width = max([len(s.labels) for s in scenes] + [width])
    y = torch.zeros(len(scenes), width, 5)
    y[:, :, 0] = PAD
    for i, s in enumerate(scenes):
        y[i, :len(s.labels), 0] = s.labels.float()
        y[i, :len(s.labels), 1:] = s.boxes
    return torch.stack([s.image for s in scenes]), y


def unpack(y: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Packed targets back as each image's ``(boxes, labels)``.

    >>> unpack(torch.tensor([[[2., 1., 1., 4., 4.], [-1., 0., 0., 0., 0.]]]))
    [(tensor([[1., 1., 4., 4.]]), tensor([2]))]
    """
    out = []
    for rows in y:
        real = rows[:, 0] != PAD
        out.append((rows[real, 1:], rows[real, 0].long()))
    return out


def _background(size: int, generator: torch.Generator) -> Tensor:
    coarse = torch.rand(3, 5, 5, generator=generator) * 0.6 + 0.2
    smooth = F.interpolate(coarse[None], size=(size, size), mode="bicubic", align_corners=False)[0]
    grain = (torch.rand(3, size, size, generator=generator) - 0.5) * 0.12
    return (smooth + grain).clamp(0, 1)


def _cutout(item: Tensor, side: int) -> tuple[Tensor, Tensor] | None:
    """An item scaled to ``side`` pixels and cut to the tight box of its pixels: (alpha ``[h, w]``, its
    grey values); ``None`` when nothing of it shows."""
    scaled = F.interpolate(item[None], size=(side, side), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    on = scaled > 0.08
    if not on.any():
        return None
    rows, cols = on.any(1).nonzero()[:, 0], on.any(0).nonzero()[:, 0]
    crop = scaled[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return (crop * 3).clamp(0, 1), crop


def _covered(box: Tensor, others: list[Tensor]) -> bool:
    """Whether ``box`` and any of ``others`` overlap by more than ``MAX_OVERLAP`` of the smaller one."""
    for other in others:
        w = (torch.minimum(box[2], other[2]) - torch.maximum(box[0], other[0])).clamp(min=0)
        h = (torch.minimum(box[3], other[3]) - torch.maximum(box[1], other[1])).clamp(min=0)
        smaller = torch.minimum((box[2:] - box[:2]).prod(), (other[2:] - other[:2]).prod())
        if w * h > MAX_OVERLAP * smaller:
            return True
    return False


def compose(items: Sequence[Tensor], classes: Sequence[int], size: int, generator: torch.Generator) -> Scene:
    """One scene of ``items`` (``[1, 28, 28]`` grey images) of ``classes`` on a fresh background, every
    object boxed; an item that finds no free place in 30 tries is left out.

    >>> g = torch.Generator().manual_seed(0)
    >>> square = torch.zeros(1, 28, 28); square[0, 4:24, 4:24] = 1
    >>> s = compose([square, square], [3, 5], 64, g)
    >>> s.image.shape, s.labels.tolist(), s.only([5]).labels.tolist()
    (torch.Size([3, 64, 64]), [3, 5], [5])
    """
    image = _background(size, generator)
    boxes: list[Tensor] = []
    labels: list[int] = []
    scale = size / 128
    for item, label in zip(items, classes, strict=True):
        side = int(torch.randint(int(SIZES[0] * scale), int(SIZES[1] * scale) + 1, (1,), generator=generator))
        cut = _cutout(item, side)
        if cut is None:
            continue
        alpha, grey = cut
        h, w = alpha.shape
        for _ in range(30):
            x0 = int(torch.randint(0, size - w + 1, (1,), generator=generator))
            y0 = int(torch.randint(0, size - h + 1, (1,), generator=generator))
            box = torch.tensor([x0, y0, x0 + w, y0 + h], dtype=torch.float32)
            if not _covered(box, boxes):
                break
        else:
            continue
        tint = torch.rand(3, 1, 1, generator=generator) * 0.8 + 0.2
        region = image[:, y0:y0 + h, x0:x0 + w]
        image[:, y0:y0 + h, x0:x0 + w] = region * (1 - alpha) + tint * grey * alpha
        boxes.append(box)
        labels.append(label)
    image = (image * 255).round() / 255  # 8 bits, as a photo has and as the cache keeps it
    return Scene(image, torch.stack(boxes) if boxes else torch.zeros(0, 4),
                 torch.tensor(labels, dtype=torch.long))


def _scenes(images: Tensor, targets: Tensor, plan: list[list[int]], size: int, seed: int) -> list[Scene]:
    """Scenes from a plan (each scene's object classes), the objects drawn from ``images``."""
    generator = torch.Generator().manual_seed(seed)
    by_class = {c: (targets == c).nonzero()[:, 0] for c in range(int(targets.max()) + 1)}
    out = []
    for classes in plan:
        picks = [by_class[c][int(torch.randint(len(by_class[c]), (1,), generator=generator))] for c in classes]
        out.append(compose([images[i] for i in picks], classes, size, generator))
    return out


def _plan(rng: np.random.Generator, count: int, present: Sequence[int], required: Sequence[int],
          objects: tuple[int, int]) -> list[list[int]]:
    """``count`` scenes of ``objects`` objects each: one of ``required`` first, the rest of ``present``."""
    plan = []
    for _ in range(count):
        n = int(rng.integers(objects[0], objects[1] + 1))
        plan.append([int(rng.choice(required))] + [int(c) for c in rng.choice(present, n - 1)])
    return plan


def detection_stream(splits: Sequence[Sequence[int]] = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)),
                     train_per_experience: int = 600, test: int = 300, size: int = 128,
                     objects: tuple[int, int] = (2, 4), seed: int = 0, cache: bool = True) -> DetectionStream:
    """The class-incremental stream: experience ``k`` brings ``splits[k]``; its training scenes each hold at
    least one object of those classes and others of any class seen so far, and only its own classes are
    labelled (``scenes`` keeps every box, for retraining on fully labelled data). ``test`` scenes hold every
    class of the stream, all labelled, from held-out items.

    >>> s = detection_stream([(0,), (1,)], train_per_experience=3, test=2, size=64, cache=False)
    >>> [e.classes for e in s.experiences], len(s.test), s.class_names[1]
    ([(0,), (1,)], 2, 'trouser')
    >>> sorted({int(c) for scene in s.experiences[1].train for c in scene.labels})  # old objects unlabelled
    [1]
    >>> sorted({int(c) for scene in s.experiences[1].scenes for c in scene.labels})  # ... but there
    [0, 1]
    """
    splits = [tuple(int(c) for c in split) for split in splits]
    everything = [c for split in splits for c in split]
    if len(set(everything)) != len(everything) or not set(everything) <= set(range(len(FASHION_CLASSES))):
        raise ValueError(f"splits must be disjoint groups of the classes 0..{len(FASHION_CLASSES) - 1}, got {splits}")
    # the generator's constants are in the key too: changing one must not read scenes drawn under the old
    key = hashlib.sha256(json.dumps([splits, train_per_experience, test, size, list(objects), seed,
                                     MAX_OVERLAP, list(SIZES)]).encode())
    path = cache_dir() / "scenes" / f"stream-{key.hexdigest()[:16]}.safetensors"
    rng = np.random.default_rng(seed)
    plans = []
    for k, split in enumerate(splits):
        seen = [c for s in splits[:k + 1] for c in s]
        plans.append(_plan(rng, train_per_experience, seen, split, objects))
    test_plan = _plan(rng, test, everything, everything, objects)
    if cache and path.is_file():
        scenes = _read(path)
    else:
        data = fashion_mnist()
        scenes = [_scenes(data.x_train, data.y_train, plan, size, seed + 1 + k) for k, plan in enumerate(plans)]
        scenes.append(_scenes(data.x_test, data.y_test, test_plan, size, seed + 1000))
        if cache:
            _write(path, scenes)
    experiences = [DetectionExperience("+".join(FASHION_CLASSES[c] for c in split), tuple(split), train)
                   for split, train in zip(splits, scenes[:-1], strict=True)]
    return DetectionStream(experiences, scenes[-1], FASHION_CLASSES)


def _write(path: Path, parts: list[list[Scene]]) -> None:
    tensors = {}
    for p, scenes in enumerate(parts):
        x, y = pack(scenes)
        tensors[f"{p}.images"] = (x * 255).round().to(torch.uint8)
        tensors[f"{p}.targets"] = y
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file(tensors, partial)
    partial.replace(path)


def _read(path: Path) -> list[list[Scene]]:
    tensors = load_file(path)
    parts = []
    for p in range(len(tensors) // 2):
        images = tensors[f"{p}.images"].float() / 255
        parts.append([Scene(image, boxes, labels)
                      for image, (boxes, labels) in zip(images, unpack(tensors[f"{p}.targets"]), strict=True)])
    return parts
