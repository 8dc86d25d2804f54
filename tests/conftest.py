"""Shared fixtures: small, seeded streams on scikit-learn's digits that train in seconds."""

import pytest
import torch

from retain import Learner
from retain.data import class_incremental, load_dataset, permuted, task_incremental
from retain.models import make_model


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def split_digits(digits):
    return class_incremental(digits, 5)


@pytest.fixture(scope="session")
def task_digits(digits):
    return task_incremental(digits, 5)


@pytest.fixture(scope="session")
def permuted_digits(digits):
    return permuted(digits, 4)


def make_learner(stream, strategies=(), seed=0, hidden=(128,), epochs=5, lr=0.05):
    torch.manual_seed(seed)
    model = make_model("mlp", stream.input_shape, stream.n_classes, hidden=hidden)
    return Learner(model, list(strategies), epochs=epochs, lr=lr, seed=seed, device="cpu")


def train_matrix(stream, strategies=(), **kw):
    learner = make_learner(stream, strategies, **kw)
    rows = []
    for exp in stream:
        learner.fit(exp)
        rows.append(learner.evaluate(stream))
    return learner, rows


def incoming(exp, n, start=0):
    """A step's batch as the learner builds it: ``n`` incoming rows of ``exp``'s training set."""
    from retain.strategies import Step

    rows = slice(start, start + n)
    return Step(exp.x_train[rows], exp.y_train[rows], exp.train_tasks()[rows], incoming=n, experience_id=exp.id)


@pytest.fixture(scope="session")
def batches(tmp_path_factory):
    """Digits exported as CSV batches by ``retain export``: a user's own files, read by the loop."""
    from retain.cli import main

    folder = tmp_path_factory.mktemp("digits") / "csv"
    assert main(["export", "digits", str(folder), "--format", "csv"]) == 0
    return folder


def loop_store(folder, batches, database=None, **sections):
    """A model store in ``folder`` whose version 1 learned batch 00 (an MLP with replay); extra
    config ``sections`` (promotion, say) are added."""
    import yaml

    from retain.cli import main

    cfg = folder / "loop.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"hidden": [64]}, "training": {"lr": 0.05, "epochs": 5},
                                   "strategies": [{"name": "replay", "memory_size": 200}]} | sections))
    argv = ["init", str(cfg), "--data", str(batches / "00" / "train.csv"), "--store", str(folder / "store"), "--json"]
    assert main(argv + (["--database", database] if database else [])) == 0
    return folder / "store"


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (see tests/postgres.py)."""
    from .postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()
