"""The user's own data: tables (CSV, TSV, JSON Lines, Parquet), image and audio folders, and arrays.

Each loader returns :class:`Labeled` rows (inputs, label ids, task ids) and raises a one-line
:class:`FileError` naming the file, the row and the field when something is wrong. Label names map
to ids through a :class:`LabelMap`, which keeps ids stable across files and reports new classes.

A folder of batches is one stream: every sub-folder (in name order) is one experience holding a
``train`` and a ``test`` split, each a table file, an ``.npz`` file, or a folder with one
sub-folder per class; ``retain export`` writes the built-in data sets this way.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from retain.data.experience import Experience, Stream

TABLES = (".csv", ".tsv", ".jsonl", ".parquet")
IMAGES = (".png", ".jpg", ".jpeg")
AUDIO = (".wav",)
ARRAYS = (".npz",)


class FileError(ValueError):
    """A file that cannot be read as data; the message names the file, row and field."""


@dataclass
class LabelMap:
    """Label names and their ids, in order of first appearance; ids never change once given.

    >>> labels = LabelMap()
    >>> labels.ids(["cat", "dog", "cat"]).tolist(), labels.ids(["bird"]).tolist(), labels.new
    ([0, 1, 0], [2], ['bird'])

    With ``numbers_are_ids`` off (a model store's labels: a class exists only once rows of it
    came), whole numbers are names like any other; a batch's new numbers take ids in their order:

    >>> labels = LabelMap(["0", "1"], numbers_are_ids=False)
    >>> labels.ids(["7", "6", "7"]).tolist(), labels.names
    ([3, 2, 3], ['0', '1', '6', '7'])
    """

    names: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # the names the last call added
    numbers_are_ids: bool = True  # labels 0, 1, ... given as whole numbers keep them as their ids

    def ids(self, names: list[str]) -> Tensor:
        """The ids of ``names``; labels that are all whole numbers (and a map holding only such)
        are their own ids, as the user gave them."""
        self.new = []
        if self.numbers_are_ids and names and all(n.isdigit() for n in names) and all(
                n == str(i) for i, n in enumerate(self.names)):
            ids = [int(n) for n in names]
            known = len(self.names)
            self.names.extend(str(i) for i in range(known, max(ids) + 1))
            self.new = sorted({n for n in names if int(n) >= known}, key=int)
            return torch.tensor(ids, dtype=torch.long)
        index = {n: i for i, n in enumerate(self.names)}
        fresh = [n for n in dict.fromkeys(names) if n not in index]
        if not self.numbers_are_ids and all(n.isdigit() for n in fresh):  # numbers in their order
            fresh.sort(key=int)
        for name in fresh:
            index[name] = len(self.names)
            self.names.append(name)
            self.new.append(name)
        return torch.tensor([index[n] for n in names], dtype=torch.long)


@dataclass
class Labeled:
    """Rows of data: inputs (float features, images, waveforms, or token ids), label ids, task ids."""

    x: Tensor
    y: Tensor
    t: Tensor
    modality: str  # tabular, text, vision or audio
    source: str
    read_as: str = ""  # how a table's columns were read (named in the config, or inferred)
    columns: dict[str, Any] = field(default_factory=dict)  # those columns, to read the stream's other files alike
    rows: list[str] = field(default_factory=list)  # where each row came from: a table's row number, a file name


def _number(value: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FileError(f"{where}: {value!r} is not a number") from None


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise FileError(f"{path}: row {line}: not UTF-8 text (byte {err.start})") from None


def json_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, object) for each non-empty line of a JSON Lines file; a line that is not a JSON
    object raises :class:`FileError` naming its row."""
    path = Path(path)
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise FileError(f"{path}: row {number}: not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise FileError(f"{path}: row {number}: a JSON object is expected, got {type(record).__name__}")
        yield number, record


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, mapping) for each record of a CSV, TSV, JSON Lines or Parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        except Exception as err:  # noqa: BLE001 - pyarrow's own errors name what is wrong with the file
            raise FileError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
        yield from enumerate(table.to_pylist(), start=1)
        return
    if suffix == ".jsonl":
        yield from json_lines(path)
        return
    text = _text(path)
    reader = csv.reader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
    header = next(reader, None)
    if not header:
        raise FileError(f"{path}: empty file (a header row naming the columns is expected)")
    for number, values in enumerate(reader, start=2):
        if not values:
            continue
        if len(values) != len(header):
            raise FileError(f"{path}: row {number}: {len(values)} fields, the header has {len(header)}")
        yield number, dict(zip(header, values, strict=True))


def load_table(path: str | Path, labels: LabelMap, *, label: str = "label", text: str | None = None,
               features: list[str] | None = None, task: str | None = None, labelled: bool = True) -> Labeled:
    """A table with a label column and either a text column or numeric feature columns (by
    default: ``text`` if there is such a column, else every column but the label and task).
    Unless ``labelled``, the label column may be missing and its labels are not read (all ``-1``)."""
    path = Path(path)
    return _records(list(_rows(path)), path, labels, label, text, features, task, labelled)


def load_hf_dataset(path: str | Path, labels: LabelMap, *, label: str = "label", text: str | None = None,
                    features: list[str] | None = None, task: str | None = None, labelled: bool = True) -> Labeled:
    """A Hugging Face ``datasets`` table saved with ``save_to_disk`` (text or numeric columns); a
    ``ClassLabel`` label column gives its names."""
    from retain.util import require

    datasets = require("datasets", "datasets")
    path = Path(path)
    try:
        table = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - datasets' own errors say what is wrong with the folder
        raise FileError(f"{path}: not a readable datasets folder ({str(err).splitlines()[0]})") from None
    if isinstance(table, datasets.DatasetDict):
        raise FileError(f"{path}: holds splits {', '.join(table)}; give one split's folder (train or test)")
    records = table.to_list()
    names = getattr(table.features.get(label), "names", None)
    if names:  # class ids stored with their names: the names are the labels
        records = [r | {label: names[r[label]]} for r in records]
    return _records(list(enumerate(records, start=1)), path, labels, label, text, features, task, labelled)


def _records(records: list[tuple[int, dict[str, Any]]], path: Path, labels: LabelMap, label: str, text: str | None,
             features: list[str] | None, task: str | None, labelled: bool = True) -> Labeled:
    if not records:
        raise FileError(f"{path}: no rows")
    columns = list(records[0][1])
    if label not in columns and labelled:
        raise FileError(f"{path}: no label column {label!r} (columns: {', '.join(columns)})")
    if task is None and "task" in columns and "task" != label:  # a column named task holds task ids
        task = "task"
    if text is None and features is None:
        text = "text" if "text" in columns else None
        features = None if text else [c for c in columns if c not in (label, task)]
    for name in [text] if text else features:
        if name not in columns:
            raise FileError(f"{path}: no column {name!r} (columns: {', '.join(columns)})")
    if task is not None and task not in columns:
        raise FileError(f"{path}: no task column {task!r} (columns: {', '.join(columns)})")
    names, tasks, rows = [], [], []
    for number, record in records:
        where = f"{path}: row {number}"
        for column in [label] * labelled + ([text] if text else features) + ([task] if task else []):
            if record.get(column) in (None, ""):
                raise FileError(f"{where}: field {column!r} is empty")
        names.append(str(record[label]) if labelled else "")
        tasks.append(int(_number(str(record[task]), f"{where}: field {task!r}")) if task else 0)
        rows.append(str(record[text]) if text else [_number(str(record[c]), f"{where}: field {c!r}")
                                                    for c in features])
    if text:
        from retain.data.tokens import tokenize

        x, modality = tokenize(rows), "text"
    else:
        x, modality = torch.tensor(rows, dtype=torch.float32), "tabular"
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).any(1).nonzero()[0])
            raise FileError(f"{path}: row {records[bad][0]}: a feature is NaN or infinite")
    inputs = f"text column {text!r}" if text else f"{len(features)} feature columns ({', '.join(features[:3])}" + (
        ", ...)" if len(features) > 3 else ")")
    read_as = inputs + (f", labels from {label!r}" if labelled else "") + (f", tasks from {task!r}" if task else "")
    return Labeled(x, _ids(labels, names, labelled), torch.tensor(tasks, dtype=torch.long), modality, str(path),
                   read_as, {"label": label, "text": text, "features": features, "task": task},
                   [f"row {number}" for number, _ in records])


def _ids(labels: LabelMap, names: list[str], labelled: bool) -> Tensor:
    return labels.ids(names) if labelled else torch.full((len(names),), -1, dtype=torch.long)


def _natural(path: Path) -> tuple:
    """Sort key: numbers in a name compare as numbers (``2.png`` before ``10.png``)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def _class_files(folder: Path, suffixes: tuple[str, ...], labelled: bool = True) -> list[tuple[Path, str]]:
    """(file, class name) for every file of one sub-folder per class, in file-name order. Unless
    ``labelled``: also the files in ``folder`` itself (or ``folder`` when it is one file), named ""."""
    if not labelled:
        found = [folder] if folder.is_file() else [f for f in sorted(folder.rglob("*"), key=_natural) if f.is_file()]
        files = [(f, "") for f in found if f.suffix.lower() in suffixes]
        if not files:
            raise FileError(f"{folder}: no {'/'.join(suffixes)} files")
        return files
    if not folder.is_dir():
        raise FileError(f"{folder}: not a folder (one sub-folder per class is expected)")
    classes = sorted((d for d in folder.iterdir() if d.is_dir()), key=_natural)
    if not classes:
        raise FileError(f"{folder}: no class sub-folders (one sub-folder per class is expected)")
    files = [(f, d.name) for d in classes for f in d.iterdir() if f.suffix.lower() in suffixes]
    if not files:
        raise FileError(f"{folder}: no {'/'.join(suffixes)} files in its class folders")
    return sorted(files, key=lambda pair: _natural(pair[0]))


def load_image_folder(folder: str | Path, labels: LabelMap, *, size: int | None = None,
                      channels: int | None = None, labelled: bool = True) -> Labeled:
    """Images (PNG, JPEG) in one sub-folder per class, scaled to [0, 1], resized to ``size`` x
    ``size`` (default: the first image's size) with ``channels`` 1 or 3 (default: the first image's)."""
    images, names = [], []
    files = _class_files(Path(folder), IMAGES, labelled)
    for path, name in files:
        array = read_image(path, size, channels)
        size, channels = array.shape[-1], array.shape[0]  # the first image's, unless given
        images.append(array)
        names.append(name)
    return Labeled(torch.from_numpy(np.stack(images)), _ids(labels, names, labelled),
                   torch.zeros(len(names), dtype=torch.long), "vision", str(folder), rows=_file_rows(folder, files))


def read_image(source: str | Path | bytes, size: int | None = None, channels: int | None = None) -> np.ndarray:
    """One image (a file, or its bytes) as a ``(channels, size, size)`` array in [0, 1]; ``size`` and
    ``channels`` default to the image's own (its width; 1 for grey images, else 3)."""
    from PIL import Image, UnidentifiedImageError

    where = "image" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise FileError(f"{where}: not a readable image ({err})") from None
    channels = channels or (1 if image.mode in ("L", "I", "I;16", "1") else 3)
    image = image.convert("L" if channels == 1 else "RGB")
    size = size or image.size[0]
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def read_wav(source: str | Path | bytes, sample_rate: int = 16_000, seconds: float = 1.0) -> np.ndarray:
    """One WAV clip (a file, or its bytes) as a mono waveform resampled to ``sample_rate`` and cut
    or zero-padded to ``seconds``."""
    from math import gcd

    from scipy.io import wavfile
    from scipy.signal import resample_poly

    where = "audio" if isinstance(source, bytes) else str(source)
    try:
        rate, raw = wavfile.read(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (ValueError, OSError, EOFError) as err:
        raise FileError(f"{where}: not a readable WAV file ({err})") from None
    if rate * 4 < sample_rate:
        raise FileError(f"{where}: sample rate {rate} Hz is too low: clips are resampled to {sample_rate} Hz, "
                        f"from {sample_rate // 4} Hz up")
    audio = raw.astype(np.float32)
    if np.issubdtype(raw.dtype, np.integer):  # PCM: scale to [-1, 1]
        audio /= float(np.iinfo(raw.dtype).max)
    if audio.ndim == 2:
        audio = audio.mean(1)
    if rate != sample_rate:
        k = gcd(rate, sample_rate)
        audio = resample_poly(audio, sample_rate // k, rate // k).astype(np.float32)
    n = round(sample_rate * seconds)
    clip = np.zeros(n, dtype=np.float32)
    clip[:min(n, len(audio))] = audio[:n]
    if not np.isfinite(clip).all():
        raise FileError(f"{where}: holds NaN or infinite samples")
    return clip


def _file_rows(folder: str | Path, files: list[tuple[Path, str]]) -> list[str]:
    """Each file's name within ``folder``."""
    folder = Path(folder)
    return [f.name if f == folder else str(f.relative_to(folder)) for f, _ in files]


def load_audio_folder(folder: str | Path, labels: LabelMap, *, sample_rate: int = 16_000,
                      seconds: float = 1.0, labelled: bool = True) -> Labeled:
    """WAV clips in one sub-folder per class, as mono waveforms resampled to ``sample_rate`` and
    cut or zero-padded to ``seconds``."""
    clips, names = [], []
    files = _class_files(Path(folder), AUDIO, labelled)
    for path, name in files:
        clips.append(read_wav(path, sample_rate, seconds))
        names.append(name)
    return Labeled(torch.from_numpy(np.stack(clips)), _ids(labels, names, labelled),
                   torch.zeros(len(names), dtype=torch.long), "audio", str(folder), rows=_file_rows(folder, files))


def load_arrays(path: str | Path, labels: LabelMap, labelled: bool = True) -> Labeled:
    """An ``.npz`` file with arrays ``x`` and ``y`` (label ids or names), and optionally ``t``; or a
    folder holding ``x.npy``, ``y.npy`` and optionally ``t.npy`` (``y`` only if ``labelled``)."""
    path = Path(path)
    arrays = {}
    try:
        if path.is_dir():
            for key in ("x", "y", "t"):
                if (path / f"{key}.npy").is_file():
                    arrays[key] = np.load(path / f"{key}.npy", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as err:
        raise FileError(f"{path}: not readable arrays ({str(err).splitlines()[0]})") from None
    for key in ("x", "y")[:1 + labelled]:
        if key not in arrays:
            raise FileError(f"{path}: no array {key!r} (arrays: {', '.join(arrays) or 'none'})")
    x = arrays["x"]
    y = arrays["y"] if labelled else np.zeros(len(x))
    if len(x) != len(y):
        raise FileError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise FileError(f"{path}: field 'x' must hold finite numbers")
    t = arrays.get("t", np.zeros(len(y), dtype=np.int64))
    modality = _array_modality(x.shape)
    return Labeled(torch.from_numpy(x.astype(np.float32)), _ids(labels, [str(v) for v in y.tolist()], labelled),
                   torch.from_numpy(t.astype(np.int64)), modality, str(path), rows=[f"row {i}" for i in range(len(x))])


def _array_modality(shape: tuple[int, ...]) -> str:
    """What arrays hold, by their shape: images ``(n, c, h, w)``, waveforms ``(n, samples)`` of
    4,000 samples and more, else feature rows."""
    return "vision" if len(shape) == 4 else "audio" if len(shape) == 2 and shape[1] >= 4000 else "tabular"


def load(path: str | Path, labels: LabelMap, labelled: bool = True, **options: Any) -> Labeled:
    """Any of the above, chosen by what ``path`` is: a table, an ``.npz`` file, or a folder of
    class folders holding images or WAV clips. Unless ``labelled`` (inputs to predict on), labels
    are not read and may be missing: a table without a label column, a folder of images or clips
    with or without class folders, one image or clip."""
    path = Path(path)
    if not path.exists():
        raise FileError(f"{path}: no such file or folder")
    table = {k: options[k] for k in ("label", "text", "features", "task") if k in options}
    if path.is_file() and path.suffix.lower() in TABLES:
        return load_table(path, labels, labelled=labelled, **table)
    if path.is_file() and path.suffix.lower() in ARRAYS:
        return load_arrays(path, labels, labelled)
    if path.is_dir() and (path / "state.json").is_file():
        return load_hf_dataset(path, labels, labelled=labelled, **table)
    if path.is_dir() and (path / "x.npy").is_file():
        return load_arrays(path, labels, labelled)
    if path.is_dir() or (not labelled and path.is_file() and path.suffix.lower() in IMAGES + AUDIO):
        found = [path] if path.is_file() else path.rglob("*") if not labelled else (
            f for d in path.iterdir() if d.is_dir() for f in d.iterdir())
        if {f.suffix.lower() for f in found} & set(AUDIO):
            return load_audio_folder(path, labels, labelled=labelled, **{k: v for k, v in options.items()
                                                                         if k in ("sample_rate", "seconds")})
        return load_image_folder(path, labels, labelled=labelled,
                                 **{k: v for k, v in options.items() if k in ("size", "channels")})
    raise FileError(f"{path}: not a table ({', '.join(TABLES)}), an .npz file, a folder of .npy arrays or of "
                    "class folders")


def split_of(batch: Path, split: str) -> Path:
    """The ``train`` or ``test`` part of a batch folder, whatever form it has."""
    found = [p for p in batch.iterdir() if p.stem == split]
    if len(found) != 1:
        raise FileError(f"{batch}: expected one '{split}' table, .npz file or folder, found "
                        f"{len(found) or 'none'}")
    return found[0]


def read_label_names(folder: Path) -> LabelMap:
    """The stream's label map: ``labels.json`` (a list of names: their ids are their positions)
    when the folder has one, else empty (ids in order of first appearance)."""
    path = folder / "labels.json"
    if not path.is_file():
        return LabelMap()
    try:
        names = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise FileError(f"{path}: not JSON ({err})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise FileError(f"{path}: a list of distinct label names is expected")
    return LabelMap(list(names))


def batches(folder: str | Path) -> list[Path]:
    """The batch folders of a stream folder, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileError(f"{folder}: not a folder (a folder of batch folders, each with train and test, is expected)")
    found = sorted((d for d in folder.iterdir() if d.is_dir()), key=_natural)
    if not found:
        raise FileError(f"{folder}: no batch folders (each holds a train and a test split)")
    return found


def modality_of(folder: str | Path, text: str | None = None) -> str:
    """What a stream folder holds, from its first batch's train split, without reading it all."""
    train = split_of(batches(folder)[0], "train")
    if train.is_dir() and (train / "x.npy").is_file():
        return _array_modality(np.load(train / "x.npy", mmap_mode="r", allow_pickle=False).shape)
    if train.is_dir() and (train / "state.json").is_file():
        from retain.util import require

        columns = require("datasets", "datasets").load_from_disk(str(train)).column_names
        return "text" if (text or "text") in columns else "tabular"
    if train.is_dir():
        kinds = {f.suffix.lower() for d in train.iterdir() if d.is_dir() for f in d.iterdir()}
        return "audio" if kinds & set(AUDIO) else "vision"
    if train.suffix.lower() in ARRAYS:
        with np.load(train, allow_pickle=False) as data:
            return _array_modality(data["x"].shape) if "x" in data.files else "tabular"
    first = next(_rows(train), (0, {}))[1]
    return "text" if (text or "text") in first else "tabular"


def load_stream(folder: str | Path, **options: Any) -> Stream:
    """A stream folder as a :class:`~retain.data.Stream`: one experience per batch folder. The
    kind is read off the data: task ids given -> task-incremental; the same classes in every batch
    -> domain-incremental; else class-incremental. Labels never seen before are new classes, listed
    per experience in ``stream.metadata["new_classes"]``."""
    folder = Path(folder)
    labels = read_label_names(folder)
    experiences, new_classes, modality, seen = [], [], None, set()
    for k, batch in enumerate(batches(folder)):
        train = load(split_of(batch, "train"), labels, **options)
        options |= train.columns  # every file of the stream is read with the first one's columns
        test = load(split_of(batch, "test"), labels, **options)
        if modality and train.modality != modality:
            raise FileError(f"{batch}: holds {train.modality} data, the batches before it {modality}")
        modality, read_as = train.modality, train.read_as
        for part in (train, test):
            if len(part.y) == 0:
                raise FileError(f"{part.source}: no rows")
        arrived = sorted(set(train.y.tolist()) - seen)
        new_classes.append([labels.names[c] for c in arrived])
        seen |= set(arrived)
        tasks = train.t.unique()
        experiences.append(Experience(train.x, train.y, test.x, test.y, id=k, task=int(tasks[0]),
                                      t_train=train.t, t_test=test.t, metadata={"source": str(batch)}))
    if any(int(e.train_tasks().max()) > 0 for e in experiences):
        scenario = "task_incremental"
    elif len({e.classes for e in experiences}) == 1 and len(experiences) > 1:
        scenario = "domain_incremental"
    else:
        scenario = "class_incremental"
    for e in experiences:
        e.scenario = scenario
    return Stream(experiences, n_classes=len(labels.names), name=f"files_{folder.name}", scenario=scenario,
                  class_names=list(labels.names), metadata={"new_classes": new_classes, "modality": modality,
                                                            "read_as": read_as})
