"""Detection: rows are images with labelled boxes, scored by mAP@0.5; the classes grow as batches bring new ones.

The model is a :class:`~retain.models.detector.Detector` (EfficientNet-Lite0 features, or a tiny CNN),
trained by a :class:`~retain.engine.detection.DetectionLearner`. A batch is a COCO JSON file or a table of
``path,x,y,w,h,label`` rows (:mod:`retain.data.box_files`); each image is kept at ``model.image_size``
pixels a side (as uint8) with its boxes scaled alike and its own size, to give answers back in its own
pixels. Class names are the store's labels, as a classifier's are: ids once given never change. A store
holds a seeded share of each batch's images out and scores every version by mAP@0.5 on each batch's
held-out images (the classes with a true box there); ``max_drop`` is in mAP points. An answer is a JSON
list of boxes, ``[{"label", "box": [x, y, w, h], "score"}]``, and feedback sends the corrected list.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator
from torch import Tensor

from retain.config import ServiceConfig
from retain.data import Experience
from retain.data.box_files import Boxed, load_scenes, read_boxed
from retain.data.files import FileError, read_image_sized
from retain.data.scenes import PAD, Scene, pack, unpack
from retain.engine.detection import DetectionLearner, applies_to_detection
from retain.engine.rows import check_strategy
from retain.metrics.boxes import box_iou, xywh_to_xyxy, xyxy_to_xywh
from retain.metrics.detection import Boxes, average_precision, box_f1, mean_average_precision
from retain.models.detector import STRIDE, Backbone, Detector
from retain.quality import GatePolicy, GateReport
from retain.quality.gate import decide
from retain.strategies import STRATEGIES, make_strategy
from retain.tasks.base import Prediction, WrittenAnswers, strings_of, strings_tensors
from retain.util import slug

IMAGES = (".png", ".jpg", ".jpeg")
MIN_SIDE = 2.0  # a box narrower or lower than this many pixels at the model's size is no object to learn
SAME_BOX = 0.95  # two boxes of one class overlapping this much (IoU) are one object labelled twice


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectorConfig(_Strict):
    """The detector (:class:`retain.models.detector.Detector`) and how it reads and answers.

    Attributes:
        backbone: ``efficientnet_lite0`` (pretrained features) or ``tiny`` (a small CNN).
        width: channels of the head.
        image_size: the side images are scaled to, in pixels (a multiple of twice the detector's stride).
        max_boxes: the most boxes an image may have.
        min_score: the lowest score of a box an answer gives, 0-1.
    """

    backbone: Backbone = "efficientnet_lite0"
    width: PositiveInt = Field(64, le=1024, description="channels of the head")
    image_size: int = Field(128, ge=32, le=1024, description="the side images are scaled to, in pixels (a "
                            f"multiple of {2 * STRIDE})")
    max_boxes: PositiveInt = Field(24, le=500, description="the most boxes an image may have")
    min_score: float = Field(0.3, gt=0, lt=1, description="the lowest score of a box an answer gives")

    @field_validator("image_size")
    @classmethod
    def _multiple(cls, v: int) -> int:
        if v % (2 * STRIDE):
            raise ValueError(f"give a multiple of {2 * STRIDE} (the detector's coarsest features), got {v}")
        return v


class DetectionTrainingConfig(_Strict):
    """How each batch trains: AdamW at ``lr``, ``epochs`` passes of ``batch_size`` images."""

    lr: PositiveFloat = 1e-3
    epochs: PositiveInt = 16
    batch_size: PositiveInt = 16
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$", description="cpu, cuda, cuda:N or mps")


class DetectionMethod(_Strict):
    """Strategies composed (those written for detectors: pseudo_labels, box_replay, detection_distill; and
    those that need no class logits: finetune, replay, l2, ewc, joint, weight averaging).

    Attributes:
        label: the method's name (a folder name once slugged).
        compose: the strategies, each a name or ``{"name": ..., knob: value}`` (a memory keeps a reservoir
            unless told otherwise).
    """

    label: str
    compose: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("compose", mode="before")
    @classmethod
    def _compose(cls, v: Any) -> list[dict[str, Any]]:
        specs = [{"name": s} if isinstance(s, str) else s for s in (v or [])]
        for i, s in enumerate(specs):
            if not isinstance(s, dict) or s.get("name") not in STRATEGIES:
                raise ValueError(f"compose[{i}]: give a strategy name, got {s!r}")
            if "policy" in STRATEGIES[s["name"]].__dataclass_fields__:  # an image has no one class to balance
                s.setdefault("policy", "reservoir")
            check_strategy(make_strategy(s["name"], **{k: w for k, w in s.items() if k != "name"}),
                           applies_to_detection, "a detector")
        return specs


RECOMMENDED = DetectionMethod(label="pseudo-labels + box replay", compose=["pseudo_labels", "box_replay"])


class DetectionConfig(_Strict):
    """A detection store's config (``task: detection``).

    Attributes:
        task: ``detection``.
        name: the run's name.
        seed: the seed of the first learner.
        model: the detector.
        training: how each batch trains.
        methods: the methods; a store learns with the first.
        max_drop: a store promotes a version only if no batch it had learned lost more than this many
            mAP@0.5 points.
        confidence: judge a batch's drop by the lower bound of a paired bootstrap over its images (their F1
            at IoU 0.5) at this confidence (None: by the drop itself).
        min_held_out: the fewest held-out images a store's batch needs.
        kept: what becomes of the images of a batch whose candidate is kept: ``carry`` them into the next
            update, ``hold`` them until ``retain update --retry``, or ``drop`` them (recorded).
        gate: a store's checks on incoming images.
        service: ``retain serve`` on a detection store.
    """

    task: Literal["detection"] = "detection"
    name: str = "detection"
    seed: int = 0
    model: DetectorConfig = Field(default_factory=DetectorConfig)
    training: DetectionTrainingConfig = Field(default_factory=DetectionTrainingConfig)
    methods: list[DetectionMethod] = Field(default_factory=lambda: [RECOMMENDED])
    max_drop: NonNegativeFloat = Field(5.0, le=100, description="a store promotes a version only if no batch "
                                       "it had learned lost more than this many mAP@0.5 points")
    confidence: float | None = Field(None, gt=0.5, lt=1.0, description="judge a batch's drop by the lower bound "
                                     "of a paired bootstrap over its images (their F1 at IoU 0.5) at this confidence")
    min_held_out: PositiveInt = Field(10, description="the fewest held-out images a store's batch needs")
    kept: Literal["carry", "hold", "drop"] = Field(
        "carry", description="the images of a batch whose candidate is kept: carried into the next update, held "
        "until `retain update --retry`, or dropped (recorded)")
    gate: GatePolicy = Field(default_factory=GatePolicy, description="a store's checks on incoming images")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="retain serve on a detection store")

    @field_validator("methods")
    @classmethod
    def _labels(cls, v: list[DetectionMethod]) -> list[DetectionMethod]:
        labels = [m.label for m in v]
        if not v or len({slug(label) for label in labels}) != len(labels):
            raise ValueError(f"give at least one method, with labels distinct as folder names (got {labels})")
        return v


def build_detector(config: DetectionConfig, method: DetectionMethod | None = None) -> DetectionLearner:
    """The learner of ``method`` (default: the config's first): the config's detector and training.

    Args:
        config: the detection config.
        method: the method whose strategies it composes (None: the config's first).

    Returns:
        An untrained detection learner.
    """
    method = method or config.methods[0]
    m, t = config.model, config.training
    strategies = [make_strategy(s["name"], **{k: v for k, v in s.items() if k != "name"}) for s in method.compose]
    return DetectionLearner(Detector(m.backbone, 0, m.width), strategies, lr=t.lr, epochs=t.epochs,
                            batch_size=t.batch_size, max_boxes=m.max_boxes, seed=config.seed, device=t.device)


@dataclass
class BoxedImages:
    """Images at the model's size, their boxes packed, each image's own size and where it came from.

    Attributes:
        x: the images at the model's size, uint8 ``[N, 3, S, S]``.
        y: their boxes packed, ``[N, M, 5]``: class id and corners in the model's pixels, ``PAD`` rows past
            an image's boxes.
        size: each image's own ``(width, height)`` in pixels, ``[N, 2]``.
        origin: where each image came from (a file, or a request's input).
    """

    x: Tensor
    y: Tensor
    size: Tensor
    origin: list[str]

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: Tensor) -> BoxedImages:
        """The images at ``index``.

        Args:
            index: image indices (a 1-d long tensor), in the order wanted.

        Returns:
            Those images with their boxes, sizes and origins.
        """
        return BoxedImages(self.x[index], self.y[index], self.size[index], [self.origin[i] for i in index.tolist()])

    def tensors(self) -> dict[str, Tensor]:
        """The images as a store keeps them.

        Returns:
            ``x``, ``y``, ``size`` and the origins' bytes; :meth:`Detection.rows_of` reads them back.
        """
        return {"x": self.x, "y": self.y, "size": self.size} | strings_tensors("origin", self.origin)

    def hashes(self) -> list[str]:
        """A hash of each image's pixels: the same image sent again, with any boxes, is a repeat.

        Returns:
            One hex digest an image.
        """
        return [hashlib.sha256(image.numpy().tobytes()).hexdigest() for image in self.x]

    def content(self) -> tuple[Tensor, ...]:
        """What a batch's hash is taken over.

        Returns:
            The images and their boxes.
        """
        return self.x, self.y

    def images(self) -> Tensor:
        """The images as the detector reads them: floats in 0..1.

        Returns:
            ``[N, 3, S, S]`` floats.
        """
        return self.x.float() / 255

    def truth(self) -> list[Boxes]:
        """Each image's true boxes.

        Returns:
            One :class:`~retain.metrics.detection.Boxes` an image: corners in the model's pixels and class ids.
        """
        return [Boxes(corners, labels) for corners, labels in unpack(self.y)]


def boxed_images(scenes: Sequence[Scene], sizes: Sequence[tuple[int, int]], origin: list[str]) -> BoxedImages:
    x, y = pack(scenes)
    return BoxedImages((x * 255).round().to(torch.uint8), y, torch.tensor(sizes, dtype=torch.long).reshape(-1, 2),
                       origin)


def widened(y: Tensor, width: int) -> Tensor:
    """Packed boxes ``y`` with ``PAD`` rows up to ``width`` boxes an image."""
    if y.shape[1] >= width:
        return y
    out = torch.zeros(len(y), width, 5)
    out[:, :, 0] = PAD
    out[:, :y.shape[1]] = y
    return out


def images_of(path: Path, labelled: bool) -> list[Boxed]:
    """What a batch or a prediction's input names: a COCO file or box table, or (to detect in) an image or a
    folder of them."""
    if not labelled and path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGES)
        if not found:
            raise FileError(f"{path}: no {', '.join(IMAGES)} images in the folder")
        return [Boxed(p) for p in found]
    if not labelled and path.suffix.lower() in IMAGES:
        return [Boxed(path)]
    return read_boxed(path, labelled)


class Detection(WrittenAnswers[BoxedImages]):
    """Images with boxes, learned batch after batch; a version is scored by mAP@0.5 on each batch's held-out
    images and promoted only if no batch it had learned lost more than ``max_drop`` points.

    Args:
        store: the detection store.
        run: the :class:`DetectionConfig` the store keeps, as JSON values.
    """

    name = "detection"
    metric = "mAP@0.5"
    labels = "class"  # the scores break down by class (a prediction's answer is its boxes)
    answer_field = "boxes"
    row_metric = "box F1 at IoU 0.5 per image"
    rows_called = "images"
    config_type = DetectionConfig
    model_kept = "a store keeps the detector its versions were made with"
    too_few = "a share of the images is held out: send more images"

    # -- rows -----------------------------------------------------------------------------
    def read(self, data: Path, labelled: bool = True, classes: Sequence[str] = ()) -> BoxedImages:
        rows, _ = self._read(data, labelled, classes)
        return rows

    def _read(self, data: Path, labelled: bool, classes: Sequence[str]) -> tuple[BoxedImages, list[str]]:
        found = images_of(Path(data), labelled)
        scenes, sizes, names = load_scenes(found, self.config.model.image_size, classes)
        return boxed_images(scenes, sizes, [str(b.path.resolve()) for b in found]), names

    def read_batch(self, data: Path, first: bool) -> tuple[BoxedImages, list[str]]:
        return self._read(data, True, self.store.labels())

    def check(self, rows: BoxedImages, names: list[str], where: str) -> None:
        if len(set(names)) != len(names):  # ids are matched to the store's by name under the writer lock
            raise ValueError(f"{where}: class names must be unique, got {names}")
        counts = (rows.y[..., 0] != PAD).sum(1)
        if not int(counts.sum()):
            raise ValueError(f"{where}: no image has a labelled box; a detector learns from labelled objects")
        if int(counts.max()) > self.config.model.max_boxes:
            i = int(counts.argmax())
            raise ValueError(f"{where}: {rows.origin[i]} has {int(counts[i])} boxes; this store's detector takes at "
                             f"most {self.config.model.max_boxes} an image (model.max_boxes)")

    def relabel(self, rows: BoxedImages, names: list[str]) -> tuple[BoxedImages, list[str]]:
        """Class ids given before the writer lock was taken, made the store's now (another update may have
        given the next ids to other new names meanwhile)."""
        known = self.store.labels()
        if names[:len(known)] == known:
            return rows, names
        merged = known + [n for n in names if n not in known]
        ids = torch.tensor([merged.index(n) for n in names], dtype=torch.float32)
        y = rows.y.clone()
        real = y[..., 0] != PAD
        y[..., 0][real] = ids[y[..., 0][real].long()]
        return BoxedImages(rows.x, y, rows.size, rows.origin), merged

    def recorded_labels(self, names: list[str]) -> list[str]:
        return names

    def answers(self, rows: BoxedImages, names: list[str], learner: Any) -> list[str]:
        return names[len(self.store.labels()):]  # classes no earlier batch brought

    def label_names(self, learner: DetectionLearner) -> list[str]:
        return self.store.labels()

    def as_came(self, data: Path, rows: BoxedImages, names: list[str]) -> list[dict[str, Any]]:
        return [{"file": o, "boxes": self._answer(truth, names, size, scored=False)}
                for o, truth, size in zip(rows.origin, rows.truth(), rows.size.tolist(), strict=True)]

    def join(self, parts: list[BoxedImages]) -> BoxedImages:
        width = max(p.y.shape[1] for p in parts)
        return BoxedImages(torch.cat([p.x for p in parts]), torch.cat([widened(p.y, width) for p in parts]),
                           torch.cat([p.size for p in parts]), [o for p in parts for o in p.origin])

    def rows_of(self, tensors: dict[str, Tensor]) -> BoxedImages:
        return BoxedImages(tensors["x"], tensors["y"], tensors["size"], strings_of(tensors, "origin"))

    # -- learning -------------------------------------------------------------------------
    def new_learner(self, rows: BoxedImages, names: list[str], seed: int) -> DetectionLearner:
        return build_detector(self.config.model_copy(update={"seed": seed}))

    def readable(self, learner: DetectionLearner, rows: BoxedImages, where: str) -> BoxedImages:
        side = rows.x.shape[-1]
        if len(rows) and side != self.config.model.image_size:
            raise ValueError(f"{where}: images of {side} pixels; this store's detector reads "
                             f"{self.config.model.image_size} (model.image_size)")
        return rows

    def fit(self, learner: DetectionLearner, train: BoxedImages, held: BoxedImages, index: int, names: list[str],
            progress: bool = False) -> None:
        x = train.images()
        learner.fit(Experience(x, train.y, x[:0], train.y[:0], id=index), progress)

    def inspect(self, rows: BoxedImages, current: DetectionLearner | None, held: dict[str, BoxedImages],
                known: set[str], seed: int) -> GateReport:
        """Repeats (the same image again, or one held out already), and images whose boxes no detector could
        learn from: a box under ``MIN_SIDE`` pixels a side at the model's size, or one object labelled twice
        (two boxes of a class overlapping by ``SAME_BOX`` IoU)."""
        report = GateReport(len(rows))
        seen = set(known) | {h for part in held.values() for h in part.hashes()}
        problems: dict[int, str] = {}
        for i, (truth, h) in enumerate(zip(rows.truth(), rows.hashes(), strict=True)):
            sides = truth.boxes[:, 2:] - truth.boxes[:, :2]
            same = box_iou(truth.boxes, truth.boxes) * (truth.labels[:, None] == truth.labels[None, :])
            if len(sides) and float(sides.min()) < MIN_SIDE:
                problems[i] = f"a box under {MIN_SIDE:g} pixels at the model's size"
            elif bool((same.triu(1) >= SAME_BOX).any()):
                problems[i] = "an object labelled twice"
            if self.gate_policy.duplicates and h in seen:
                report.duplicates.append(i)
            seen.add(h)
        report.label_issues = sorted(problems)
        share = len(problems) / max(len(rows), 1)
        kinds = sorted(set(problems.values()))
        found = (f"{len(problems)} images with boxes no detector learns from ({100 * share:.1f}% of {len(rows)}"
                 f"{': ' + ', '.join(kinds) if kinds else ''}), {len(report.duplicates)} duplicates")
        return decide(report, share, found, self.gate_policy)

    def detections(self, learner: DetectionLearner, rows: BoxedImages, min_score: float = 0.01) -> list[Boxes]:
        """What ``learner`` detects in each of ``rows``' images.

        Args:
            learner: a version's learner.
            rows: the images.
            min_score: the lowest score of a box kept, 0-1.

        Returns:
            One set of boxes an image, in the model's pixels, with scores.
        """
        return learner.detect(rows.images(), min_score=min_score) if len(rows) else []

    def scores(self, learner: DetectionLearner, held: dict[str, BoxedImages]) -> dict[str, float]:
        """mAP@0.5 on each batch's held-out images, over the classes with a true box there; a batch whose
        held-out images hold no box scores the share of them the detector leaves empty."""
        out = {}
        for name, rows in held.items():
            per_class = ap50(self.detections(learner, rows), rows.truth())
            out[name] = (sum(per_class.values()) / len(per_class) if per_class
                         else float(self.row_scores_of(learner, rows).mean()))
        return out

    def row_scores_of(self, learner: DetectionLearner, rows: BoxedImages) -> Tensor:
        """Each image's F1 of its boxes at IoU 0.5, answers taken at ``model.min_score``.

        Args:
            learner: a version's learner.
            rows: labelled images.

        Returns:
            One F1 (0-1) an image, float32.
        """
        found = self.detections(learner, rows, self.config.model.min_score)
        return torch.tensor([box_f1(f, t) for f, t in zip(found, rows.truth(), strict=True)], dtype=torch.float32)

    def row_scores(self, learner: DetectionLearner, held: dict[str, BoxedImages]) -> dict[str, Tensor]:
        """Each held-out image's F1 of its boxes at IoU 0.5 (answers at ``model.min_score``), keyed by batch: what
        a paired bootstrap resamples to bound a batch's drop (mAP is no mean over images)."""
        return {name: self.row_scores_of(learner, rows) for name, rows in held.items()}

    def per_answer(self, learner: DetectionLearner, held: dict[str, BoxedImages]) -> dict[str, float]:
        """AP@0.5 of each class over every held-out image."""
        rows = self.join(list(held.values())) if held else None
        if rows is None or not len(rows):
            return {}
        names = self.store.labels()
        return {names[c] if c < len(names) else f"class {c}": ap
                for c, ap in ap50(self.detections(learner, rows), rows.truth()).items()}

    # -- answering ------------------------------------------------------------------------
    def _answer(self, found: Boxes, names: list[str], size: Sequence[int], scored: bool = True) -> list[dict[str, Any]]:
        """Boxes as an answer gives them: in the image's own pixels, ``[x, y, w, h]``, highest score first."""
        side = self.config.model.image_size
        width, height = size
        scale = torch.tensor([width / side, height / side] * 2)
        limit = torch.tensor([width, height, width, height], dtype=torch.float32)
        corners = torch.minimum((found.boxes.float() * scale).clamp(min=0), limit)
        order = (torch.argsort(found.scores, descending=True, stable=True) if found.scores is not None
                 else torch.arange(len(found.labels)))
        out = []
        for i in order.tolist():
            label = int(found.labels[i])
            box: dict[str, Any] = {"label": names[label] if label < len(names) else f"class {label}",
                   "box": [round(v, 1) for v in xyxy_to_xywh(corners[i:i + 1])[0].tolist()]}
            if min(box["box"][2:]) < 1:  # squeezed to nothing against an edge: no box to show or to correct
                continue
            if scored and found.scores is not None:
                box["score"] = round(float(found.scores[i]), 4)
            out.append(box)
        return out

    def predict(self, learner: DetectionLearner, data: Any, top_k: int, progress: bool = False) -> list[Prediction]:
        """Each image's boxes scored at least ``model.min_score``, as a JSON list (see the module docstring)."""
        rows = data if isinstance(data, BoxedImages) else self.read(Path(data), labelled=False)
        rows = self.readable(learner, rows, str(data) if isinstance(data, str | Path) else "inputs")
        names = self.store.labels()
        found = self.detections(learner, rows, self.config.model.min_score)
        return [Prediction(o, json.dumps(self._answer(f, names, size)), [])
                for o, f, size in zip(rows.origin, found, rows.size.tolist(), strict=True)]

    def request_rows(self, inputs: list[dict[str, Any]], where: str) -> BoxedImages:
        """Images sent as base64 PNG or JPEG files (each input ``{"image"}``)."""
        import base64
        import binascii

        from retain.data.files import InputError

        images, sizes = [], []
        for i, item in enumerate(inputs):
            kind = next(iter(item))
            if kind != "image":
                raise InputError(f"{where}.{i}.{kind}", "this model detects objects: send 'image' (base64 of a PNG "
                                 "or JPEG file)")
            try:
                raw = base64.b64decode(item["image"], validate=True)
            except (binascii.Error, ValueError):
                raise InputError(f"{where}.{i}.image", "not base64") from None
            try:
                array, size = read_image_sized(raw, self.config.model.image_size, channels=3)
            except FileError as err:
                raise InputError(f"{where}.{i}.image", str(err).removeprefix("image: ")) from None
            images.append(torch.from_numpy(array))
            sizes.append(size)
        scenes = [Scene(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) for image in images]
        return boxed_images(scenes, sizes, [f"{where}.{i}" for i in range(len(images))])

    def warm_rows(self) -> BoxedImages:
        side = self.config.model.image_size
        return boxed_images([Scene(torch.zeros(3, side, side), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))],
                            [(side, side)], ["warm-up"])

    def answer_groups(self, rows: BoxedImages) -> list[str]:
        return ["boxes"] * len(rows)  # predictions are counted as images answered

    def shown(self, answer: str) -> dict[str, Any]:
        return {"boxes": json.loads(answer)}

    def answer_problem(self, rows: BoxedImages, index: int, answer: str) -> str | None:
        """Boxes that are not a list of boxes, more of them than the detector takes, or a box reaching more than a
        pixel outside its image."""
        try:
            boxes = parse_boxes(answer, "boxes")
        except ValueError as err:
            return str(err)
        if len(boxes) > self.config.model.max_boxes:
            return (f"{len(boxes)} boxes; this store's detector takes at most {self.config.model.max_boxes} an "
                    "image (model.max_boxes)")
        width, height = rows.size[index].tolist()
        for j, box in enumerate(boxes):
            x, y, w, h = box["box"]
            if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
                return f"boxes[{j}].box: {box['box']} reaches outside the image, which is {width} x {height} pixels"
        return None

    def answer_names(self, rows: BoxedImages, answers: list[str]) -> list[str]:
        return [box["label"] for answer in answers for box in parse_boxes(answer, "boxes")]

    def answer_score(self, answer: str, label: str) -> float:
        """The answer's F1 at IoU 0.5 against the boxes feedback sent (1: both empty)."""
        found, truth = parse_boxes(answer, "answer", lenient=True), parse_boxes(label, "feedback", lenient=True)
        names = sorted({b["label"] for b in found + truth})

        def boxes(items: list[dict[str, Any]]) -> Boxes:
            corners = xywh_to_xyxy(torch.tensor([b["box"] for b in items], dtype=torch.float64).reshape(-1, 4))
            return Boxes(corners, torch.tensor([names.index(b["label"]) for b in items], dtype=torch.long),
                         torch.tensor([b.get("score", 1.0) for b in items], dtype=torch.float64))

        return box_f1(boxes(found), boxes(truth))

    def with_answers(self, rows: BoxedImages, answers: list[str]) -> tuple[BoxedImages, list[str]]:
        """``rows`` with the boxes feedback sent (in each image's own pixels), and the class names they use:
        the store's, then new ones in the order they first appear."""
        names = list(self.store.labels())
        side = self.config.model.image_size
        width = max([len(parse_boxes(a, "feedback")) for a in answers] + [1])
        y = torch.zeros(len(rows), width, 5)
        y[:, :, 0] = PAD
        for i, (answer, (w, h)) in enumerate(zip(answers, rows.size.tolist(), strict=True)):
            for j, box in enumerate(parse_boxes(answer, "feedback")):
                if box["label"] not in names:
                    names.append(box["label"])
                corners = xywh_to_xyxy(torch.tensor([box["box"]], dtype=torch.float32))[0]
                limit = torch.tensor([w, h, w, h], dtype=torch.float32)
                y[i, j, 0] = names.index(box["label"])
                y[i, j, 1:] = torch.minimum(corners.clamp(min=0), limit) * (side / limit)
        return BoxedImages(rows.x, y, rows.size, rows.origin), names

    def evaluate(self, learner: DetectionLearner, data: Path, version: int, progress: bool = False) -> dict[str, Any]:
        rows, names = self._read(data, True, self.store.labels())
        rows = self.readable(learner, rows, str(data))
        found, truth = self.detections(learner, rows), rows.truth()
        scores = mean_average_precision(found, truth)
        known = learner.model.n_classes
        per_class = ap50(found, truth)
        return {"version": version, "rows": len(rows), "map50": scores["map50"], "map": scores["map"],
                "per_class": {names[c]: ap for c, ap in per_class.items()},
                "unknown_classes": [names[c] for c in per_class if c >= known]}

    # -- tuning a store (retain.tuning.answers) ----------------------------------------------------
    def tuning_share(self, rows: BoxedImages, percent: int, salt: str) -> Tensor:
        """By a hash of each image: an image falls on one side whatever its boxes."""
        return self.hashed_share(rows.hashes(), percent, salt)

    def tuning_values(self) -> dict[str, Any]:
        return {"training.lr": self.config.training.lr} | self.strategy_values(self.config.methods[0].compose)

    def tuned(self, values: dict[str, Any]) -> DetectionConfig:
        raw = self.config.model_dump(mode="json")
        method = raw["methods"][0]
        method["compose"] = self.with_strategy_values(method["compose"], values)
        raw["methods"] = [method]
        raw["training"]["lr"] = values.get("training.lr", raw["training"]["lr"])
        config: DetectionConfig = self.validate(raw)
        return config


def ap50(found: list[Boxes], truth: list[Boxes]) -> dict[int, float]:
    """AP at IoU 0.5 of each class with a true box in ``truth`` (COCO's, at that one threshold)."""
    out = {}
    for c in sorted({int(v) for t in truth for v in t.labels.tolist()}):
        ap = average_precision(found, truth, c, [0.5])
        assert ap is not None  # None only for a class with no true box
        out[c] = float(ap[0])
    return out


def parse_boxes(answer: str, where: str, lenient: bool = False) -> list[dict[str, Any]]:
    """The boxes of an answer or of feedback: a JSON list of ``{"label", "box": [x, y, w, h]}`` (and, for an
    answer, ``"score"``); what is not is refused naming the box and the field.

    Args:
        answer: the JSON text.
        where: what it is, named in messages (``feedback``, ``answer``).
        lenient: leave boxes with no area out instead of refusing them, as a stored answer is read to score it.

    Returns:
        Each box as ``{"label", "box"}`` (and ``"score"`` when given), its label stripped, its numbers floats.

    Raises:
        ValueError: the text is not a list of boxes; it names the box and the field.

    >>> parse_boxes('[{"label": "cat", "box": [1, 2, 3, 4]}]', "feedback")
    [{'label': 'cat', 'box': [1.0, 2.0, 3.0, 4.0]}]
    >>> parse_boxes('[{"label": "cat", "box": [1, 2, 0, 4]}]', "feedback")
    Traceback (most recent call last):
    ...
    ValueError: feedback[0].box: width and height must be positive, got [1, 2, 0, 4]
    """
    try:
        items = json.loads(answer)
    except json.JSONDecodeError:
        raise ValueError(f"{where}: not a JSON list of boxes") from None
    if not isinstance(items, list):
        raise ValueError(f"{where}: give a list of boxes, each {{\"label\": ..., \"box\": [x, y, w, h]}}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("label"), str) or not item["label"].strip():
            raise ValueError(f"{where}[{i}].label: give the class name of the box")
        box = item.get("box")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 1e7 for v in box)):
            raise ValueError(f"{where}[{i}].box: give [x, y, width, height] in the image's pixels, got {box!r}")
        if box[2] <= 0 or box[3] <= 0:
            if lenient:
                continue
            raise ValueError(f"{where}[{i}].box: width and height must be positive, got {box}")
        out.append({"label": item["label"].strip(), "box": [float(v) for v in box]}
                   | ({"score": float(item["score"])} if isinstance(item.get("score"), int | float) else {}))
    return out


__all__ = ["BoxedImages", "Detection", "DetectionConfig", "DetectionMethod", "DetectorConfig", "build_detector",
           "parse_boxes"]
