"""The model store: versions, atomic promotion, rollback, crash safety, readers beside a writer."""

import multiprocessing
import os
import signal
import threading

import pytest
import torch
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from retain.store import Batch, ModelStore, StoreError

from .conftest import make_learner


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request):
    """The store's database: SQLite in its folder (the default), or a real PostgreSQL server's."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres").database()


@pytest.fixture
def store_and_learner(tmp_path, split_digits, database):
    store = ModelStore.create(tmp_path / "store", config={"name": "digits"}, database=database)
    learner = make_learner(split_digits, [], epochs=1)
    learner.fit(split_digits[0])
    exp = split_digits[0]
    v1 = store.add_version(learner, metrics={"acc": learner.score(exp)}, decision="promoted", reason="first",
                           batches=[Batch.of(exp.x_train, exp.y_train, source="batch 0")])
    store.promote(v1)
    return store, learner


def test_versions_promotion_and_rollback(store_and_learner, split_digits):
    store, learner = store_and_learner
    x = split_digits[0].x_test
    first = learner.predict_logits(x)
    learner.fit(split_digits[1])
    v2 = store.add_version(learner, parent=1, metrics={"acc": 0.1}, decision="refused",
                           reason="batch 0 accuracy fell 80 points")
    assert store.promoted() == 1 and torch.equal(store.load(device="cpu").predict_logits(x), first)  # untouched
    store.promote(v2)
    assert torch.equal(store.load(device="cpu").predict_logits(x), learner.predict_logits(x))
    assert store.rollback() == 1 and store.promoted() == 1
    rows = store.versions()
    assert [(v.id, v.parent, v.decision, v.promoted) for v in rows] == [(1, None, "promoted", True),
                                                                        (2, 1, "refused", False)]
    assert rows[0].batches[0].rows == len(split_digits[0].y_train) and rows[0].batches[0].source == "batch 0"
    assert [e[2] for e in store.events()] == ["version", "promote", "version", "promote", "promote"]
    with pytest.raises(StoreError, match="version 9 is not a ready version"):
        store.promote(9)
    with pytest.raises(StoreError, match="version 1 has no parent to roll back to"):
        store.rollback()


def test_a_new_store_needs_an_empty_folder_and_an_old_one_its_database(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(StoreError, match="already holds files"):
        ModelStore.create(tmp_path / "full", config={})
    with pytest.raises(StoreError, match="is not a model store"):
        ModelStore(tmp_path / "full")


POINTS = ["in-save", "before-ready", "in-promote"]


def _write_and_die(store, learner, point):
    import retain.engine.persist as persist
    import retain.store.store as module

    if point == "in-save":
        real = persist.durable_write
        persist.durable_write = lambda path, data: (real(path, data[:10]), os.kill(os.getpid(), signal.SIGKILL))
    if point == "before-ready":
        real_save = learner.save
        learner.save = lambda folder: (real_save(folder), os.kill(os.getpid(), signal.SIGKILL))
    if point == "in-promote":
        real_transaction = module.ModelStore._transaction

        def transaction(self):
            manager = real_transaction(self)
            db = manager.__enter__()
            db.execute(text("UPDATE meta SET value = '2' WHERE key = 'promoted'"))
            os.kill(os.getpid(), signal.SIGKILL)  # before the commit

        module.ModelStore._transaction = transaction
    version = store.add_version(learner, parent=1, decision="promoted")
    store.promote(version)
    os._exit(0)


@pytest.mark.parametrize("point", POINTS)
def test_killed_while_writing_a_version_or_promoting_it_the_store_serves_the_old_one(store_and_learner,
                                                                                     split_digits, point):
    store, learner = store_and_learner
    x = split_digits[0].x_test
    old = learner.predict_logits(x)
    learner.fit(split_digits[1])
    if point == "in-promote":
        store.add_version(learner, parent=1, decision="candidate")  # version 2, whole; its promotion is killed
    child = multiprocessing.get_context("fork").Process(target=_write_and_die, args=(store, learner, point))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    again = ModelStore(store.path)
    assert again.promoted() == 1 and torch.equal(again.load(device="cpu").predict_logits(x), old)
    ready = [v.id for v in again.versions()]
    assert ready == ([1, 2] if point == "in-promote" else [1])  # a half-written version is never listed
    version = again.add_version(learner, parent=1)  # and the store goes on
    again.promote(version)
    assert torch.equal(again.load(device="cpu").predict_logits(x), learner.predict_logits(x))


def test_readers_load_whole_versions_while_a_writer_adds_and_promotes(store_and_learner, split_digits):
    store, learner = store_and_learner
    x = split_digits[0].x_test
    seen, errors, done = set(), [], threading.Event()

    def read():
        reader = ModelStore(store.path)
        while not done.is_set():
            try:
                logits = reader.load(device="cpu").predict_logits(x)
                seen.add(float(logits.sum()))
            except (StoreError, SQLAlchemyError, OSError, ValueError) as err:
                errors.append(err)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    expected = {float(learner.predict_logits(x).sum())}
    for exp in split_digits[1:4]:
        learner.fit(exp)
        store.promote(store.add_version(learner, parent=store.promoted()))
        expected.add(float(learner.predict_logits(x).sum()))
    done.set()
    for r in readers:
        r.join()
    assert errors == [] and seen and seen <= expected
