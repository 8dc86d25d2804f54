"""Images with boxes from the user's files: a COCO JSON file, or a table of ``path,x,y,w,h,label`` rows.

Boxes are written as COCO writes them, ``x, y, width, height`` in the image's own pixels from its top
left corner. A table has a row per box (an image with no object: one row with ``x,y,w,h,label`` empty),
paths relative to the table; a COCO file names its images (``file_name``, relative to the file), its
categories and its annotations. What cannot be read is refused with the file, row or annotation, and
the field: a missing image, a box with no area or outside its image, an annotation of an unknown image
or category.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from retain.data.files import TABLES, FileError, read_image_sized, table_records
from retain.data.scenes import Scene
from retain.extras import require


@dataclass
class Boxed:
    """One image file and its labelled boxes: corners ``(x1, y1, x2, y2)`` in its pixels; ``where`` names each
    box's row or annotation for messages."""

    path: Path
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)


def _box(values: Sequence[object], where: str) -> tuple[float, float, float, float]:
    """Corners of an ``x, y, w, h`` box whose values are finite numbers and whose sides are positive."""
    numbers = []
    for name, value in zip("xywh", values, strict=True):
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise FileError(f"{where}: {name} {value!r} is not a number") from None
        if not math.isfinite(number):
            raise FileError(f"{where}: {name} is {value!r}; give a finite number")
        numbers.append(number)
    x, y, w, h = numbers
    if w <= 0 or h <= 0:
        raise FileError(f"{where}: the box is {w:g} x {h:g} pixels; width and height must be positive")
    return x, y, x + w, y + h


def box_table(path: str | Path, labelled: bool = True) -> list[Boxed]:
    """The images of a table (CSV, TSV, JSON Lines, Parquet) with columns ``path,x,y,w,h,label``, in the order
    they first appear; unless ``labelled``, only ``path`` is needed (images to detect objects in).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "boxes.csv").write_text("path,x,y,w,h,label\\na.png,1,2,3,4,cat\\nb.png,,,,,\\n")
    ...     [(b.path.name, b.boxes, b.labels) for b in box_table(Path(d) / "boxes.csv")]
    [('a.png', [(1.0, 2.0, 4.0, 6.0)], ['cat']), ('b.png', [], [])]
    """
    path = Path(path)
    images: dict[str, Boxed] = {}
    for number, record in table_records(path):
        where = f"{path}: row {number}"
        needed = ("path", "x", "y", "w", "h", "label") if labelled else ("path",)
        missing = [c for c in needed if c not in record]
        if missing:
            raise FileError(f"{where}: no column {missing[0]!r}; a box table has columns path,x,y,w,h,label")
        name = str(record["path"] or "").strip()
        if not name:
            raise FileError(f"{where}: path is empty")
        image = images.setdefault(name, Boxed(path.parent / name))
        values = [record.get(c) for c in ("x", "y", "w", "h")]
        if not labelled or all(v in (None, "") for v in [*values, record.get("label")]):
            continue  # an image with no object in it (or one to detect in)
        label = str(record.get("label") or "").strip()
        if not label:
            raise FileError(f"{where}: label is empty (an image with no object: leave x, y, w, h and label all empty)")
        image.boxes.append(_box(values, where))
        image.labels.append(label)
        image.where.append(where)
    if not images:
        raise FileError(f"{path}: no rows")
    return list(images.values())


def coco_file(path: str | Path) -> list[Boxed]:
    """The images of a COCO detection file (``images``, ``annotations``, ``categories``), labelled by their
    categories' names; an image with no annotation is one with no object, and crowd annotations
    (``iscrowd: 1``, a region of many objects) are left out.

    >>> import tempfile
    >>> coco = {"images": [{"id": 7, "file_name": "a.png"}], "categories": [{"id": 1, "name": "cat"}],
    ...         "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]},
    ...                         {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 9, 9], "iscrowd": 1}]}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "coco.json").write_text(json.dumps(coco))
    ...     [(b.path.name, b.boxes, b.labels) for b in coco_file(Path(d) / "coco.json")]
    [('a.png', [(1.0, 2.0, 4.0, 6.0)], ['cat'])]
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FileError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise FileError(f"{path}: a COCO file is an object with 'images', 'annotations' and 'categories' lists")
    try:
        names = {c["id"]: str(c["name"]) for c in data.get("categories", [])}
        images = {img["id"]: Boxed(path.parent / str(img["file_name"])) for img in data["images"]}
    except (KeyError, TypeError) as err:
        raise FileError(f"{path}: every image needs an id and a file_name, every category an id and a name "
                        f"(missing {err})") from None
    for i, note in enumerate(data.get("annotations", [])):
        where = f"{path}: annotations[{i}]"
        if not isinstance(note, dict) or not all(k in note for k in ("image_id", "category_id", "bbox")):
            raise FileError(f"{where}: an annotation needs image_id, category_id and bbox")
        if note["image_id"] not in images:
            raise FileError(f"{where}: image_id {note['image_id']!r} is not one of the file's images")
        if note["category_id"] not in names:
            raise FileError(f"{where}: category_id {note['category_id']!r} is not one of the file's categories")
        if note.get("iscrowd"):  # a crowd region, not one object: COCO's evaluation ignores it, so does training
            continue
        bbox = note["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise FileError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
        image = images[note["image_id"]]
        image.boxes.append(_box(bbox, where))
        image.labels.append(names[note["category_id"]])
        image.where.append(where)
    if not images:
        raise FileError(f"{path}: no images")
    return list(images.values())


def read_boxed(path: str | Path, labelled: bool = True) -> list[Boxed]:
    """The images and boxes a batch names: a COCO ``.json`` file or a box table."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return coco_file(path)
    if path.suffix.lower() in TABLES:
        return box_table(path, labelled)
    raise FileError(f"{path}: give a COCO .json file or a table ({', '.join(TABLES)}) of path,x,y,w,h,label rows")


def load_scenes(images: Sequence[Boxed], size: int, classes: Sequence[str] = (),
                slack: float = 1.0) -> tuple[list[Scene], list[tuple[int, int]], list[str]]:
    """Each image read and scaled to ``size`` x ``size`` pixels with its boxes scaled alike, its own
    ``(width, height)`` (to scale answers back), and the class names: ``classes`` (the ids they have) and
    then the new ones, in the order they first appear. A box reaching more than ``slack`` pixels past its
    image's edge is refused; one within it is clipped to the image."""
    scenes, sizes, names = [], [], list(classes)
    ids = {name: i for i, name in enumerate(names)}
    for image in images:
        array, (width, height) = read_image_sized(image.path, size, channels=3)
        boxes = torch.tensor(image.boxes, dtype=torch.float32).reshape(-1, 4)
        for (x1, y1, x2, y2), where in zip(image.boxes, image.where, strict=True):
            if x1 < -slack or y1 < -slack or x2 > width + slack or y2 > height + slack:
                raise FileError(f"{where}: the box ({x1:g}, {y1:g}) to ({x2:g}, {y2:g}) reaches outside "
                                f"{image.path.name}, which is {width} x {height} pixels")
        limit = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = torch.minimum(boxes.clamp(min=0), limit) * (size / limit)
        for label in image.labels:
            if label not in ids:
                ids[label] = len(names)
                names.append(label)
        labels = torch.tensor([ids[label] for label in image.labels], dtype=torch.long)
        scenes.append(Scene(torch.from_numpy(array), boxes, labels))
        sizes.append((width, height))
    return scenes, sizes, names


def write_box_table(scenes: Sequence[Scene], folder: str | Path, class_names: Sequence[str],
                    name: str = "boxes.csv") -> Path:
    """Scenes as a user's files: a PNG an image in ``folder`` and the table ``name`` of ``path,x,y,w,h,label``
    rows (an image with no box: one row with only its path), which :func:`box_table` reads back. Returns the
    table's path (a batch ``retain init`` and ``retain update`` take).

    >>> import tempfile
    >>> scene = Scene(torch.zeros(3, 8, 8), torch.tensor([[1., 2., 5., 6.]]), torch.tensor([0]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     [(b.path.name, b.boxes, b.labels) for b in box_table(write_box_table([scene], d, ["cat"]))]
    [('image-00000.png', [(1.0, 2.0, 5.0, 6.0)], ['cat'])]
    """
    import csv

    import numpy as np
    Image = require("PIL.Image", "vision")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / name
    with table.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "x", "y", "w", "h", "label"])
        for i, scene in enumerate(scenes):
            file = f"image-{i:05d}.png"
            pixels = (scene.image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(np.ascontiguousarray(pixels)).save(folder / file)
            if not len(scene.labels):
                writer.writerow([file, "", "", "", "", ""])
            for (x1, y1, x2, y2), label in zip(scene.boxes.tolist(), scene.labels.tolist(), strict=True):
                writer.writerow([file, f"{x1:g}", f"{y1:g}", f"{x2 - x1:g}", f"{y2 - y1:g}", class_names[label]])
    return table
