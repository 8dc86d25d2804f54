"""Write a built-in data set as the files a user would bring, cut into batches by a scenario.

The folder holds ``labels.json`` (the class names, in id order) and one batch folder per
experience (``00``, ``01``, ...) with a ``train`` and a ``test`` split, as tables, arrays, image
folders or WAV folders: ``retain.data.files.load_stream`` reads it back to the same labels, order
and values (tables hold images and sounds as rows of feature columns: flattened, read as tabular
data), so a run on it gives the built-in run's numbers.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from retain.data.datasets import DATASETS, Dataset, load_dataset, per_class
from retain.data.files import FileError
from retain.data.scenarios import build_scenario
from retain.extras import require

FORMATS = ("csv", "tsv", "jsonl", "parquet", "hf", "npz", "npy", "images", "wav")


def _texts(name: str, test_fraction: float, split_seed: int) -> tuple[list[str], list[str]]:
    from retain.data import text

    data = getattr(text, name)(test_fraction=test_fraction, seed=split_seed)
    return list(data.texts_train), list(data.texts_test)


def export(dataset: str, folder: str | Path, fmt: str, *, kind: str = "class_incremental", n_experiences: int = 5,
           test_fraction: float = 0.3, split_seed: int = 0, class_order: list[int] | None = None,
           shuffle_seed: int | None = None, max_train_per_class: int | None = None,
           max_test_per_class: int | None = None, path: str | None = None) -> Path:
    """Write ``dataset`` cut by a ``kind`` scenario (class- or task-incremental) into ``folder``
    in format ``fmt`` (one of :data:`FORMATS`); the options are the run config's ``scenario``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if kind not in ("class_incremental", "task_incremental"):
        raise ValueError(f"export cuts class_incremental or task_incremental streams, not {kind}")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileError(f"{folder}: already holds files; export into a new or empty folder")
    data = load_dataset(dataset, path, test_fraction, split_seed)
    modality = DATASETS[dataset].modality
    texts = _texts(dataset, test_fraction, split_seed) if modality == "text" else None
    if fmt == "images" and not _whole_steps(data.x_train):
        raise FileError(f"{dataset}: its pixels are not whole steps of 1/255, which PNG would round; export it as "
                        "csv, tsv, jsonl, parquet or npz")
    if modality == "text" and fmt in ("npz", "npy", "images", "wav"):
        raise FileError(f"{dataset} holds texts: export it as a table (csv, tsv, jsonl, parquet or hf)")
    if fmt == "wav" and modality != "audio" or fmt == "images" and modality != "vision":
        raise FileError(f"{dataset} holds {modality} data: format {fmt} does not fit it")
    # The scenario cuts row indices, so every format gets exactly the built-in stream's rows and order.
    index = Dataset(data.name, torch.arange(len(data.y_train), dtype=torch.float32)[:, None], data.y_train,
                    torch.arange(len(data.y_test), dtype=torch.float32)[:, None], data.y_test, data.class_names)
    if max_train_per_class or max_test_per_class:
        index = per_class(index, max_train_per_class, max_test_per_class, split_seed)
    stream = build_scenario(kind, index, n_experiences, class_order=class_order, seed=shuffle_seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.json").write_text(json.dumps(list(data.class_names), indent=1))
    for exp in stream:
        batch = folder / f"{exp.id:02d}"
        batch.mkdir()
        for split, rows, y, t in (("train", exp.x_train, exp.y_train, exp.train_tasks()),
                                  ("test", exp.x_test, exp.y_test, exp.test_tasks())):
            idx = rows[:, 0].long()
            x = (data.x_train if split == "train" else data.x_test)[idx]
            raw = [texts[0 if split == "train" else 1][i] for i in idx.tolist()] if texts else None
            names = [data.class_names[c] for c in y.tolist()]
            _write(batch / split, fmt, x, raw, names, t if kind == "task_incremental" else None)
    return folder


def _whole_steps(x: Tensor) -> bool:
    return bool(torch.equal((x * 255).round() / 255, x))


def _write(base: Path, fmt: str, x: Tensor, texts: list[str] | None, names: list[str], tasks: Tensor | None) -> None:
    if fmt in ("csv", "tsv", "jsonl", "parquet", "hf"):
        columns: dict[str, list[Any]] = {}
        if texts is not None:
            columns["text"] = texts
        else:
            flat = x.reshape(len(x), -1).numpy()
            width = len(str(flat.shape[1] - 1))
            for j in range(flat.shape[1]):  # 9 significant digits bring a float32 back exactly
                columns[f"f{j:0{width}d}"] = [format(float(v), ".9g") for v in flat[:, j]]
        columns["label"] = names
        if tasks is not None:
            columns["task"] = tasks.tolist()
        _table(base, fmt, columns)
    elif fmt in ("npz", "npy"):
        arrays: dict[str, Any] = {"x": x.numpy(), "y": np.array(names)}  # Any: np.savez's **kwds may name any array
        if tasks is not None:
            arrays["t"] = tasks.numpy()
        if fmt == "npz":
            np.savez(base.with_suffix(".npz"), **arrays)
        else:  # a folder of one .npy file per array
            base.mkdir()
            for key, array in arrays.items():
                np.save(base / f"{key}.npy", array)
    elif fmt == "images":
        Image = require("PIL.Image", "vision")
        for i, (image, name) in enumerate(zip(x, names, strict=True)):
            pixels = (image * 255).round().to(torch.uint8).numpy()
            (base / name).mkdir(parents=True, exist_ok=True)
            picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
            picture.save(base / name / f"{i:06d}.png")
    else:
        from scipy.io import wavfile

        for i, (clip, name) in enumerate(zip(x, names, strict=True)):
            (base / name).mkdir(parents=True, exist_ok=True)
            wavfile.write(base / name / f"{i:06d}.wav", 16_000, clip.numpy().astype(np.float32))


def _table(base: Path, fmt: str, columns: dict[str, list[Any]]) -> None:
    names = list(columns)
    rows = list(zip(*columns.values(), strict=True))
    if fmt == "hf":  # a Hugging Face datasets folder, as save_to_disk writes it
        datasets = require("datasets", "hf")
        datasets.disable_progress_bars()
        datasets.Dataset.from_dict(columns).save_to_disk(str(base))
    elif fmt == "parquet":
        pa, pq = require("pyarrow", "parquet"), require("pyarrow.parquet", "parquet")
        pq.write_table(pa.table({k: [str(v) for v in vs] for k, vs in columns.items()}), base.with_suffix(".parquet"))
    elif fmt == "jsonl":
        with open(base.with_suffix(".jsonl"), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(dict(zip(names, row, strict=True)), ensure_ascii=False) + "\n")
    else:
        with open(base.with_suffix(f".{fmt}"), "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
            writer.writerow(names)
            writer.writerows(rows)
