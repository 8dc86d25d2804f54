"""The user's own data: tables (CSV, TSV, JSON Lines, Parquet), image and audio folders, and arrays.

Each loader returns :class:`Labeled` rows (inputs, label ids, task ids) and raises a one-line
:class:`FileError` naming the file, the row and the field when something is wrong. Label names map
to ids through a :class:`LabelMap`, which keeps ids stable across files and reports new classes.

A folder of batches is one stream: every sub-folder (in name order) is one experience holding a
``train`` and a ``test`` split, each a table file, an ``.npz`` file, or a folder with one
sub-folder per class; ``retain export`` writes the built-in data sets this way.

Inputs are bounded before they are decoded, so that a small file cannot cost minutes or gigabytes:
images by their pixel count (:data:`MAX_PIXELS`, read from the header), WAV clips by their sample
rate (:data:`MAX_SAMPLE_RATE`) and by reading only the frames a clip keeps; numeric values by their
magnitude (:data:`MAX_FEATURE`). Only regular files are opened: a pipe or device in a folder is
refused by name, never read (it would block).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from retain.data.experience import Experience, Stream
from retain.extras import require

TABLES = (".csv", ".tsv", ".jsonl", ".parquet")
IMAGES = (".png", ".jpg", ".jpeg")
AUDIO = (".wav",)
ARRAYS = (".npz",)

# Features beyond this magnitude are refused. Squares of 1e12 are 1e24, so variances and covariances
# over up to a trillion such values (the gate's standardisation, SLDA's statistics) stay far below
# float32's 3.4e38; values near it (1e30, 3e38) gave NaN probabilities. Counts, prices and Unix
# times (1.7e9) fit; a larger column wants scaling (an MLP already diverges on raw values of 1e9).
MAX_FEATURE = 1e12
# Images of more pixels are refused before decoding: a 24-megapixel photo (6000 x 4000) fits, a
# 12000 x 12000 image (144 million pixels: half a second and 144-432 MB to decode) does not.
MAX_PIXELS = 2**25
MAX_SAMPLE_RATE = 384_000  # the highest rate common audio hardware records at
MAX_CHANNELS = 64


class InputError(ValueError):
    """An input the model cannot read; ``field`` names it (``inputs.3.image``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


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

    @property
    def feature_columns(self) -> list[str] | None:
        """The names of the numeric feature columns read, in the order of ``x``'s columns (None: not
        a table of features)."""
        return self.columns.get("features") or self.columns.get("expect_features")


def out_of_range(x: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the first value of a ``(rows, columns)`` array that is NaN, infinite or
    beyond ±:data:`MAX_FEATURE`; None when every value is in range.

    >>> out_of_range(np.array([[1.0, 2.0], [3.0, 1e30]])), out_of_range(np.zeros((2, 2)))
    ((1, 1), None)
    """
    bad = ~(np.abs(x) <= MAX_FEATURE)  # NaN compares False: bad too
    if not bad.any():
        return None
    row, column = np.argwhere(bad)[0]
    return int(row), int(column)


def value_problem(value: float) -> str:
    """Why a feature value is refused (see :data:`MAX_FEATURE`)."""
    if not math.isfinite(value):
        return f"{value} (NaN or infinite)"
    return (f"{value:g} is beyond ±{MAX_FEATURE:g}: larger values overflow the model's float32 arithmetic; "
            "scale the column")


def _regular(path: Path) -> Path:
    """``path``, if it is a regular file (or a link to one); a pipe, socket or device is refused by
    name without being opened (opening a pipe blocks until someone writes to it)."""
    if not path.is_file():
        raise FileError(f"{path}: not a regular file (a pipe, socket, device or folder); remove it or move it away")
    return path


def _number(value: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FileError(f"{where}: {value!r} is not a number") from None


def _text(path: Path) -> str:
    _regular(path)
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
        pq = require("pyarrow.parquet", "parquet")
        try:
            table = pq.read_table(_regular(path))
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
               features: list[str] | None = None, task: str | None = None, labelled: bool = True,
               expect_features: list[str] | None = None) -> Labeled:
    """A table with a label column and either a text column or numeric feature columns (by
    default: ``text`` if there is such a column, else every column but the label and task).
    Unless ``labelled``, the label column may be missing and its labels are not read (all ``-1``).

    ``expect_features``: when ``features`` are not named, the feature columns an earlier file had
    (a store's first batch, a stream's first file): this file must have the same names, in any
    order, and they are read by name.
    """
    path = Path(path)
    return _records(list(_rows(path)), path, labels, label, text, features, task, labelled, expect_features)


def load_hf_dataset(path: str | Path, labels: LabelMap, *, label: str = "label", text: str | None = None,
                    features: list[str] | None = None, task: str | None = None, labelled: bool = True,
                    expect_features: list[str] | None = None) -> Labeled:
    """A Hugging Face ``datasets`` table saved with ``save_to_disk`` (text or numeric columns); a
    ``ClassLabel`` label column gives its names."""
    datasets = require("datasets", "hf")
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
    return _records(list(enumerate(records, start=1)), path, labels, label, text, features, task, labelled,
                    expect_features)


def _same_columns(path: Path, found: list[str], expected: list[str]) -> None:
    """Refuse feature columns ``found`` that are not ``expected`` (any order), listing the differences."""
    missing = [c for c in expected if c not in found]
    unknown = [c for c in found if c not in expected]
    if missing or unknown:
        parts = [f"{what} column{'s' * (len(names) > 1)} {', '.join(map(repr, names))}"
                 for what, names in (("no", missing), ("unknown", unknown)) if names]
        shown = ", ".join(expected[:8]) + (", ..." if len(expected) > 8 else "")
        raise FileError(f"{path}: {'; '.join(parts)} (feature columns are matched by name, in any order, to "
                        f"the {len(expected)} read first: {shown}; to read only some, name them under "
                        "scenario.files.features)")


def _records(records: list[tuple[int, dict[str, Any]]], path: Path, labels: LabelMap, label: str, text: str | None,
             features: list[str] | None, task: str | None, labelled: bool = True,
             expect_features: list[str] | None = None) -> Labeled:
    if not records:
        raise FileError(f"{path}: no rows")
    columns = list(records[0][1])
    if label not in columns and labelled:
        raise FileError(f"{path}: no label column {label!r} (columns: {', '.join(columns)})")
    if task is None and "task" in columns and "task" != label:  # a column named task holds task ids
        task = "task"
    named = features is not None or text is not None
    if not named and expect_features is not None:
        _same_columns(path, [c for c in columns if c not in (label, task)], expect_features)
        features = list(expect_features)
    elif not named:
        text = "text" if "text" in columns else None
        features = None if text else [c for c in columns if c not in (label, task)]
    read = [text] if text is not None else features  # an empty name is refused below as a missing column
    assert read is not None  # columns named, or found above
    for name in read:
        if name not in columns:
            raise FileError(f"{path}: no column {name!r} (columns: {', '.join(columns)})")
    if task is not None and task not in columns:
        raise FileError(f"{path}: no task column {task!r} (columns: {', '.join(columns)})")
    names, tasks, rows = [], [], []
    for number, record in records:
        where = f"{path}: row {number}"
        for column in [label] * labelled + read + ([task] if task else []):
            if record.get(column) in (None, ""):
                raise FileError(f"{where}: field {column!r} is empty")
        names.append(str(record[label]) if labelled else "")
        tasks.append(int(_number(str(record[task]), f"{where}: field {task!r}")) if task else 0)
        rows.append(str(record[text]) if text else [_number(str(record[c]), f"{where}: field {c!r}")
                                                    for c in read])
    if text:
        from retain.data.tokens import tokenize

        x, modality = tokenize(cast(list[str], rows)), "text"
    else:
        values = np.asarray(rows, dtype=np.float64)
        bad = out_of_range(values)
        if bad:
            row, col = bad
            raise FileError(f"{path}: row {records[row][0]}: field {read[col]!r}: "
                            f"{value_problem(float(values[row, col]))}")
        x, modality = torch.from_numpy(values.astype(np.float32)), "tabular"
    inputs = f"text column {text!r}" if text else f"{len(read)} feature columns ({', '.join(read[:3])}" + (
        ", ...)" if len(read) > 3 else ")")
    read_as = inputs + (f", labels from {label!r}" if labelled else "") + (f", tasks from {task!r}" if task else "")
    return Labeled(x, _ids(labels, names, labelled), torch.tensor(tasks, dtype=torch.long), modality, str(path),
                   read_as, {"label": label, "text": text, "features": features if named else None, "task": task,
                             "expect_features": None if named or text else features},
                   [f"row {number}" for number, _ in records])


def _ids(labels: LabelMap, names: list[str], labelled: bool) -> Tensor:
    return labels.ids(names) if labelled else torch.full((len(names),), -1, dtype=torch.long)


def _natural(path: Path) -> tuple[int | str, ...]:
    """Sort key: numbers in a name compare as numbers (``2.png`` before ``10.png``)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def _class_files(folder: Path, suffixes: tuple[str, ...], labelled: bool = True) -> list[tuple[Path, str]]:
    """(file, class name) for every file of one sub-folder per class, in file-name order. Unless
    ``labelled``: also the files in ``folder`` itself (or ``folder`` when it is one file), named ""."""
    if not labelled:
        found = [folder] if folder.is_file() else sorted(folder.rglob("*"), key=_natural)
        files = [(_regular(f), "") for f in found if f.suffix.lower() in suffixes and not f.is_dir()]
        if not files:
            raise FileError(f"{folder}: no {'/'.join(suffixes)} files")
        return files
    if not folder.is_dir():
        raise FileError(f"{folder}: not a folder (one sub-folder per class is expected)")
    classes = sorted((d for d in folder.iterdir() if d.is_dir()), key=_natural)
    if not classes:
        raise FileError(f"{folder}: no class sub-folders (one sub-folder per class is expected)")
    files = [(_regular(f), d.name) for d in classes for f in d.iterdir() if f.suffix.lower() in suffixes]
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
    """One PNG or JPEG image (a file, or its bytes) as a ``(channels, size, size)`` array in [0, 1];
    ``size`` and ``channels`` default to the image's own (its width; 1 for grey images, else 3).
    An image of more than :data:`MAX_PIXELS` pixels is refused from its header, before decoding."""
    return read_image_sized(source, size, channels)[0]


def read_image_sized(source: str | Path | bytes, size: int | None = None,
                     channels: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image`, and the image's own ``(width, height)`` (a detector's boxes are in its pixels)."""
    Image = require("PIL.Image", "vision")
    UnidentifiedImageError = Image.UnidentifiedImageError

    where = "image" if isinstance(source, bytes) else str(source)
    try:
        with warnings.catch_warnings():  # Pillow warns of (and past twice its limit refuses) large images
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else _regular(Path(source)),
                                formats=("PNG", "JPEG"))
        with opened as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise FileError(f"{where}: {width} x {height} pixels; images of at most {MAX_PIXELS:,} pixels are "
                                "read (resize it first)")
            image.load()
    except Image.DecompressionBombError as err:
        raise FileError(f"{where}: too many pixels ({err}); images of at most {MAX_PIXELS:,} pixels are read") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise FileError(f"{where}: not a readable image ({err})") from None
    channels = channels or (1 if image.mode in ("L", "I", "I;16", "1") else 3)
    image = image.convert("L" if channels == 1 else "RGB")
    size = size or image.size[0]
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return (array[None] if channels == 1 else array.transpose(2, 0, 1)), (width, height)


def _wav_chunks(f: io.BufferedIOBase, where: str) -> tuple[bytes, int]:
    """The ``fmt `` chunk of a RIFF/WAVE file and the size its ``data`` chunk claims, ``f`` left at
    the data's start; a header that is not whole is refused."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise FileError(f"{where}: not a readable WAV file (no RIFF/WAVE header)")
    fmt = None
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            raise FileError(f"{where}: not a readable WAV file (the header is cut short before the data chunk)")
        name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
        if name == b"data":
            if fmt is None:
                raise FileError(f"{where}: not a readable WAV file (no fmt chunk before the data)")
            return fmt, size
        if name == b"fmt ":
            fmt = f.read(size)
            if size < 16 or len(fmt) < size:
                raise FileError(f"{where}: not a readable WAV file (its fmt chunk is cut short)")
            f.read(size % 2)
        else:
            f.seek(size + size % 2, io.SEEK_CUR)


def read_wav(source: str | Path | bytes, sample_rate: int = 16_000, seconds: float = 1.0) -> np.ndarray:
    """One WAV clip (a file, or its bytes) as a mono waveform resampled to ``sample_rate`` and cut
    or zero-padded to ``seconds``.

    The header is read first: sample rates above :data:`MAX_SAMPLE_RATE` or more than
    :data:`MAX_CHANNELS` channels are refused, and only the frames the clip keeps (plus the
    resampling filter's reach) are read and decoded, whatever length the file claims. A rate whose
    ratio to ``sample_rate`` needs a denominator above 1,000 is resampled by the nearest such ratio
    (off by less than 0.1%), which keeps the filter short.
    """
    import struct
    from fractions import Fraction

    from scipy.io import wavfile
    from scipy.signal import resample_poly

    where = "audio" if isinstance(source, bytes) else str(source)
    with io.BytesIO(source) if isinstance(source, bytes) else open(_regular(Path(source)), "rb") as f:  # noqa: SIM115
        fmt, claimed = _wav_chunks(f, where)
        _, n_channels, rate, _, block, bits = struct.unpack("<HHIIHH", fmt[:16])
        if not 0 < n_channels <= MAX_CHANNELS:
            raise FileError(f"{where}: {n_channels} channels; WAV clips of 1 to {MAX_CHANNELS} channels are read")
        if not 0 < bits <= 64 or block != n_channels * ((bits + 7) // 8):
            raise FileError(f"{where}: not a readable WAV file ({bits} bits a sample and {block} bytes a frame "
                            f"for {n_channels} channels do not agree)")
        if rate > MAX_SAMPLE_RATE:
            raise FileError(f"{where}: sample rate {rate} Hz; clips of at most {MAX_SAMPLE_RATE} Hz are read")
        if rate * 4 < sample_rate:
            raise FileError(f"{where}: sample rate {rate} Hz is too low: clips are resampled to {sample_rate} Hz, "
                            f"from {sample_rate // 4} Hz up")
        ratio = Fraction(sample_rate, rate).limit_denominator(1000)
        up, down = ratio.numerator, ratio.denominator
        n = round(sample_rate * seconds)
        frames = math.ceil((n * down + 10 * max(up, down)) / up) + 1  # resample_poly's filter reaches 10 * max
        data = f.read(min(claimed, frames * block))
    data = data[:len(data) // block * block]  # a clip cut short keeps its whole frames
    riff = (b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"\0" * (len(fmt) % 2)
            + b"data" + len(data).to_bytes(4, "little") + data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            _, raw = wavfile.read(io.BytesIO(b"RIFF" + len(riff).to_bytes(4, "little") + riff))
    except (ValueError, OSError, EOFError, ArithmeticError) as err:
        raise FileError(f"{where}: not a readable WAV file ({err})") from None
    audio = raw.astype(np.float32)
    if np.issubdtype(raw.dtype, np.integer):  # PCM: scale to [-1, 1]
        audio /= float(np.iinfo(raw.dtype).max)
    if audio.ndim == 2:
        audio = audio.mean(1)
    if ratio != 1 and len(audio):
        audio = resample_poly(audio, up, down).astype(np.float32)
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
    if not np.issubdtype(x.dtype, np.number) or x.dtype.kind == "c":
        raise FileError(f"{path}: field 'x' must hold real numbers, not {x.dtype}")
    bad = out_of_range(x.reshape(len(x), -1)) if len(x) else None
    if bad:
        row, column = bad
        raise FileError(f"{path}: row {row}: field 'x' value {column}: "
                        f"{value_problem(float(x.reshape(len(x), -1)[row, column]))}")
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
    table = {k: options[k] for k in ("label", "text", "features", "task", "expect_features") if k in options}
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
        columns = require("datasets", "hf").load_from_disk(str(train)).column_names
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
    experiences: list[Experience] = []
    new_classes: list[list[str]] = []
    modality: str | None = None
    seen: set[int] = set()
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
        tasks = torch.unique(train.t)
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


def table_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, record) for each row of a table file, numbered as the messages about it are."""
    return _rows(Path(path))
