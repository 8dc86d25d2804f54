"""A versioned model store: a SQLite database of versions, their data batches and gate decisions,
and one saved learner folder per version; the "promoted" pointer moves in one transaction.

Layout: ``STORE/store.db`` and ``STORE/versions/<n>/`` (a :meth:`Learner.save` folder). A version is
written in three steps: its row is inserted as ``writing``, its learner is saved (atomic and
fsynced), then one transaction marks it ``ready`` with its metrics, batches and decision. Only ready
versions can be promoted or loaded, and promotion is one ``UPDATE`` in a transaction: killed at any
point, the store still opens with its last promoted version loadable, and nothing half-written is
ever read. SQLite runs in WAL mode, so readers (a predictor) go on while one writer (an updater)
works.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retain.engine import Learner
from retain.engine.persist import durable_write

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY, parent INTEGER REFERENCES versions(id), created REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('writing', 'ready')), metrics TEXT NOT NULL DEFAULT '{}',
    decision TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY, version INTEGER NOT NULL REFERENCES versions(id), sha256 TEXT NOT NULL,
    rows INTEGER NOT NULL, source TEXT NOT NULL, role TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, version INTEGER, kind TEXT NOT NULL, detail TEXT NOT NULL);
"""
FORMAT = 1


class StoreError(ValueError):
    """A store that cannot be used as asked; the message says why."""


@dataclass
class Batch:
    """A data batch a version was trained or evaluated on: its content hash, size and origin."""

    sha256: str
    rows: int
    source: str
    role: str = "train"  # train, or held_out (evaluated on, never trained on)

    @classmethod
    def of(cls, *tensors: Any, source: str, role: str = "train") -> Batch:
        """The batch holding ``tensors`` (inputs, labels, ...), hashed by content."""
        h = hashlib.sha256()
        for t in tensors:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return cls(h.hexdigest(), len(tensors[0]), source, role)


@dataclass
class Version:
    """One version of the model, as the store records it."""

    id: int
    parent: int | None
    created: float
    status: str
    metrics: dict[str, Any]
    decision: str
    reason: str
    promoted: bool = False
    batches: list[Batch] = field(default_factory=list)


class ModelStore:
    """A folder of model versions (see the module docstring). Open an existing store with
    ``ModelStore(path)``, make a new one with :meth:`create`.

    >>> import tempfile, torch
    >>> from retain.models import make_model
    >>> store = ModelStore.create(tempfile.mkdtemp() + "/store", config={"name": "demo"})
    >>> learner = Learner(make_model("mlp", (4,), 3, hidden=(8,)), device="cpu")
    >>> v1 = store.add_version(learner, metrics={"acc": 0.5}, decision="promoted", reason="first version")
    >>> store.promote(v1); store.promoted()
    1
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "store.db").is_file():
            raise StoreError(f"{self.path} is not a model store (store.db is missing); make one with retain init")
        with self._db() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if row is None or int(row[0]) != FORMAT:
            raise StoreError(f"{self.path}: unsupported store format {row[0] if row else None!r}")

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any]) -> ModelStore:
        """A new, empty store at ``path`` (a folder that does not exist or is empty)."""
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise StoreError(f"{path} already holds files; a new store needs a new or empty folder")
        (path / "versions").mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path / "store.db", isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(SCHEMA)
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                           [("format", str(FORMAT)), ("config", json.dumps(config)), ("promoted", "")])
            db.execute("COMMIT")
        finally:
            db.close()
        return cls(path)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path / "store.db", isolation_level=None, timeout=30)
        try:
            db.execute("PRAGMA synchronous = FULL")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")  # one writer at a time; readers see the last commit
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @property
    def config(self) -> dict[str, Any]:
        with self._db() as db:
            return json.loads(db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])

    def folder(self, version: int) -> Path:
        return self.path / "versions" / str(version)

    def add_version(self, learner: Learner, *, parent: int | None = None, metrics: dict[str, Any] | None = None,
                    batches: list[Batch] = (), decision: str = "", reason: str = "", promote: bool = False) -> int:
        """Save ``learner`` as a new version and record what it was made from; with ``promote``
        it becomes the promoted one in the same transaction that records it."""
        with self._transaction() as db:
            if parent is not None and not self._ready(db, parent):
                raise StoreError(f"parent version {parent} is not a ready version of this store")
            version = db.execute("INSERT INTO versions (parent, created, status) VALUES (?, ?, 'writing')",
                                 (parent, time.time())).lastrowid
        learner.save(self.folder(version))
        with self._transaction() as db:
            db.execute("UPDATE versions SET status = 'ready', metrics = ?, decision = ?, reason = ? WHERE id = ?",
                       (json.dumps(metrics or {}), decision, reason, version))
            db.executemany("INSERT INTO batches (version, sha256, rows, source, role) VALUES (?, ?, ?, ?, ?)",
                           [(version, b.sha256, b.rows, b.source, b.role) for b in batches])
            db.execute("INSERT INTO events (at, version, kind, detail) VALUES (?, ?, 'version', ?)",
                       (time.time(), version, decision or "saved"))
            if promote:
                db.execute("UPDATE meta SET value = ? WHERE key = 'promoted'", (str(version),))
                db.execute("INSERT INTO events (at, version, kind, detail) VALUES (?, ?, 'promote', ?)",
                           (time.time(), version, reason or "promoted"))
        return version

    @staticmethod
    def _ready(db: sqlite3.Connection, version: int) -> bool:
        row = db.execute("SELECT status FROM versions WHERE id = ?", (version,)).fetchone()
        return row is not None and row[0] == "ready"

    def promote(self, version: int, reason: str = "promoted") -> None:
        """Make ``version`` the one served: one transaction moves the pointer."""
        with self._transaction() as db:
            if not self._ready(db, version):
                raise StoreError(f"version {version} is not a ready version of this store")
            db.execute("UPDATE meta SET value = ? WHERE key = 'promoted'", (str(version),))
            db.execute("INSERT INTO events (at, version, kind, detail) VALUES (?, ?, 'promote', ?)",
                       (time.time(), version, reason))

    def promoted(self) -> int | None:
        """The version served now (None before the first promotion)."""
        with self._db() as db:
            value = db.execute("SELECT value FROM meta WHERE key = 'promoted'").fetchone()[0]
        return int(value) if value else None

    def rollback(self, version: int | None = None) -> int:
        """Promote ``version``, or by default the parent of the promoted one; returns it."""
        current = self.promoted()
        if version is None:
            if current is None:
                raise StoreError("nothing is promoted yet: nothing to roll back")
            version = self.version(current).parent
            if version is None:
                raise StoreError(f"version {current} has no parent to roll back to")
        self.promote(version, reason=f"rollback from {current}")
        return version

    def load(self, version: int | None = None, device: str = "auto") -> Learner:
        """The learner of ``version`` (default: the promoted one), verified as ``Learner.load`` does."""
        version = self.promoted() if version is None else version
        if version is None:
            raise StoreError(f"{self.path}: no version is promoted yet")
        with self._db() as db:
            if not self._ready(db, version):
                raise StoreError(f"version {version} is not a ready version of this store")
        return Learner.load(self.folder(version), device=device)

    def version(self, version: int) -> Version:
        found = [v for v in self.versions() if v.id == version]
        if not found:
            raise StoreError(f"{self.path} has no ready version {version}")
        return found[0]

    def versions(self) -> list[Version]:
        """Every ready version, oldest first, with its batches and whether it is promoted."""
        promoted = self.promoted()
        with self._db() as db:
            rows = db.execute("SELECT id, parent, created, status, metrics, decision, reason FROM versions "
                              "WHERE status = 'ready' ORDER BY id").fetchall()
            batches = db.execute("SELECT version, sha256, rows, source, role FROM batches ORDER BY id").fetchall()
        out = []
        for id_, parent, created, status, metrics, decision, reason in rows:
            out.append(Version(id_, parent, created, status, json.loads(metrics), decision, reason, id_ == promoted,
                               [Batch(h, n, s, r) for v, h, n, s, r in batches if v == id_]))
        return out

    def labels(self) -> list[str]:
        """The label name of each class id, stable across versions."""
        with self._db() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'labels'").fetchone()
        return json.loads(row[0]) if row else []

    def set_labels(self, names: list[str]) -> None:
        """Record the label names; ids once given never change (the list only grows)."""
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'labels'").fetchone()
            known = json.loads(row[0]) if row else []
            if names[:len(known)] != known:
                raise StoreError(f"label ids must stay as they are: the store has {known}, got {names}")
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('labels', ?)", (json.dumps(names),))

    def put_data(self, name: str, tensors: dict[str, Any], kind: str = "data") -> None:
        """Keep tensors under ``name``, written whole or not at all: a batch's held-out rows
        (``data``: read only once a ready version records the batch), or rows the gate set aside
        for review (``quarantine``, never deleted)."""
        from safetensors.torch import save

        folder = self.path / kind
        folder.mkdir(exist_ok=True)
        durable_write(folder / f"{name}.tmp", save({k: v.contiguous() for k, v in tensors.items()}))
        os.replace(folder / f"{name}.tmp", folder / f"{name}.safetensors")
        fd = os.open(folder, os.O_RDONLY)  # the new name is on the disk before a version can refer to it
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def held_out_names(self, versions: list[int] | None = None) -> list[str]:
        """The held-out batches ready versions record (only those of ``versions`` when given), in order."""
        with self._db() as db:
            rows = db.execute("SELECT DISTINCT b.source, b.version FROM batches b JOIN versions v ON v.id = b.version "
                              "WHERE b.role = 'held_out' AND v.status = 'ready' ORDER BY b.source").fetchall()
        return sorted({name for name, v in rows if versions is None or v in versions})

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """One writer at a time (an advisory lock on ``writer.lock``); readers are never blocked."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        with open(self.path / "writer.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def data_names(self, kind: str = "data") -> list[str]:
        """The names of the tensors kept with :meth:`put_data`, sorted."""
        return sorted(p.stem for p in (self.path / kind).glob("*.safetensors"))

    def get_data(self, name: str, kind: str = "data") -> dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(self.path / kind / f"{name}.safetensors")

    def log(self, kind: str, detail: str, version: int | None = None) -> None:
        """Add an event to the store's log (a gate decision, say)."""
        with self._transaction() as db:
            db.execute("INSERT INTO events (at, version, kind, detail) VALUES (?, ?, ?, ?)",
                       (time.time(), version, kind, detail))

    def events(self) -> list[tuple[float, int | None, str, str]]:
        """The store's log: versions saved, promotions, rollbacks, with their reasons."""
        with self._db() as db:
            return db.execute("SELECT at, version, kind, detail FROM events ORDER BY id").fetchall()
