"""The version registry: a database of model versions, their data batches and decisions, and their saved learners.

The "promoted" pointer moves in one transaction; the same database holds the service's intake
(feedback, predictions, leases: :mod:`retain.store.intake`), created with the rest.

Layout: ``STORE/store.db`` (SQLite, the default; or ``STORE/database.url`` naming a PostgreSQL
database, for several hosts) and ``STORE/versions/<n>/`` (a :meth:`Learner.save` folder). A version is
written in three steps: its row is inserted as ``writing``, its learner is saved (atomic and
fsynced), then one transaction marks it ``ready`` with its metrics, batches and decision. Only ready
versions can be promoted or loaded, and promotion is one ``UPDATE`` in a transaction: killed at any
point, the store still opens with its last promoted version loadable, and nothing half-written is
ever read. Readers (a predictor) go on while one writer (an updater) works: SQLite runs in WAL
mode, PostgreSQL readers see the last commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from retain.extras import require_extra
from retain.store.intake import TABLES as INTAKE_TABLES
from retain.store.intake import Intake

if TYPE_CHECKING:  # torch is imported only by what loads or saves a model: versions, rollback answer at once
    import sqlite3

    from retain.engine import Learner
    from retain.engine.detection import DetectionLearner
    from retain.engine.generative import GenerativeLearner

FORMAT = 1
SQLITE = "store.db"  # the default database, inside the store's folder
URL_FILE = "database.url"  # or a SQLAlchemy URL (PostgreSQL) kept here

TABLES = MetaData()
META = Table("meta", TABLES, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))
VERSIONS = Table(
    "versions", TABLES, Column("id", Integer, primary_key=True), Column("parent", Integer, ForeignKey("versions.id")),
    Column("created", Float, nullable=False), Column("status", Text, nullable=False),
    Column("metrics", Text, nullable=False, server_default="{}"),
    Column("decision", Text, nullable=False, server_default=""),
    Column("reason", Text, nullable=False, server_default=""),
    CheckConstraint("status IN ('writing', 'ready')", name="version_status"))
BATCHES = Table(
    "batches", TABLES, Column("id", Integer, primary_key=True),
    Column("version", Integer, ForeignKey("versions.id"), nullable=False), Column("sha256", Text, nullable=False),
    Column("rows", Integer, nullable=False), Column("source", Text, nullable=False),
    Column("role", Text, nullable=False))
EVENTS = Table(
    "events", TABLES, Column("id", Integer, primary_key=True), Column("at", Float, nullable=False),
    Column("version", Integer), Column("kind", Text, nullable=False), Column("detail", Text, nullable=False))
# A batch whose candidate was kept: its rows wait (pending: carried into the next update on the
# promoted line; held: until ``retain update --retry``), or were dropped with a record, or a promoted
# version learned them (learned). Its train rows are kept as data ``<name>-pending``, its held-out rows as
# ``<name>``; ``feedback``: the service's feedback rows it holds (JSON ids), settled with it.
PENDING = Table(
    "pending", TABLES, Column("name", Text, primary_key=True), Column("at", Float, nullable=False),
    Column("version", Integer, nullable=False), Column("source", Text, nullable=False),
    Column("rows", Integer, nullable=False), Column("status", Text, nullable=False),
    Column("learned_by", Integer), Column("feedback", Text), Column("detail", Text, nullable=False, server_default=""),
    CheckConstraint("status IN ('pending', 'held', 'dropped', 'learned')", name="pending_status"))
KEPT = ("pending", "held", "dropped")  # what becomes of a kept candidate's rows (a promotion rule's ``kept``)
"""The statuses a batch whose candidate was kept may have: waiting for the next update, held for review, dropped."""

def database_url(url: str) -> URL:
    """``url`` parsed, with PostgreSQL's default driver set to psycopg (version 3, the one installed)
    and a SQLite file's path made absolute. Refused: other databases, SQLite in memory (gone with the
    process), and passwords (they would be written into the store's folder: use ``PGPASSWORD`` or
    ``~/.pgpass``)."""
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise StoreError(f"{url!r} is not a database URL (e.g. postgresql://user@host/db): {err}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"{backend!r} databases are not supported; use SQLite or PostgreSQL")
    if parsed.password is not None:
        raise StoreError("leave the password out of the database URL (it would be kept in the store's folder): "
                         "give it in PGPASSWORD or ~/.pgpass")
    if backend == "postgresql":
        require_extra("postgres", "psycopg")
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:" or "mode=memory" in str(parsed):
            raise StoreError("a store's SQLite database must be a file, not in memory")
        parsed = parsed.set(database=str(Path(parsed.database).resolve()))
    return parsed


def _engine(url: URL) -> Engine:
    """An engine with no pool (a connection per use: safe across fork, a killed writer holds nothing).
    On SQLite: WAL, so readers go on beside a writer; full sync; writes take the lock when they
    begin (``BEGIN IMMEDIATE``), so two writers queue instead of failing half-way."""
    engine = create_engine(url, poolclass=NullPool)
    if url.get_backend_name() == "sqlite":
        @event.listens_for(engine, "connect")
        def _connect(dbapi: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
            dbapi.isolation_level = None  # SQLAlchemy's begin event below starts the transactions
            for pragma in ("journal_mode = WAL", "synchronous = FULL", "busy_timeout = 30000"):
                dbapi.execute(f"PRAGMA {pragma}")

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")
    return engine


def _create_tables(db: Connection) -> None:
    """The tables a store's database holds that it lacks: versions and their records, and the intake's."""
    TABLES.create_all(db)
    INTAKE_TABLES.create_all(db)


class StoreError(ValueError):
    """A store that cannot be used as asked; the message says why."""


@dataclass
class Batch:
    """A data batch a version was trained or evaluated on: its content hash, size and origin.

    Attributes:
        sha256: the hash of its tensors' shapes and bytes.
        rows: how many rows it holds.
        source: where it came from (a file, a pending batch's name).
        role: ``train`` (learned), or ``held_out`` (scored on, never learned).
    """

    sha256: str
    rows: int
    source: str
    role: str = "train"  # train, or held_out (evaluated on, never trained on)

    @classmethod
    def of(cls, *tensors: Any, source: str, role: str = "train") -> Batch:
        """The batch holding ``tensors`` (inputs, labels, ...), hashed by content.

        Args:
            *tensors: the batch's tensors, rows first.
            source: where the batch came from.
            role: ``train`` or ``held_out``.

        Returns:
            The batch, its rows counted from the first tensor.
        """
        h = hashlib.sha256()
        for t in tensors:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return cls(h.hexdigest(), len(tensors[0]), source, role)


@dataclass
class Pending:
    """A batch whose candidate was kept, and what became of its rows (see :data:`PENDING`).

    Attributes:
        name: the batch's name (its held-out rows are kept under it).
        at: when it was recorded, in seconds since the epoch.
        version: the kept version that first learned it.
        source: where its rows came from.
        rows: how many rows it holds.
        status: ``pending``, ``held``, ``dropped`` or ``learned``.
        learned_by: the promoted version that learned it, or None.
        feedback: the ids of the service's feedback rows it holds.
        detail: why it has its status (a reviewer's words, a rule's reason).
    """

    name: str
    at: float
    version: int  # the kept version that first learned it
    source: str
    rows: int
    status: str  # pending, held, dropped or learned
    learned_by: int | None = None
    feedback: list[int] = field(default_factory=list)
    detail: str = ""


@dataclass
class Version:
    """One version of the model, as the store records it.

    Attributes:
        id: the version's number, from 1.
        parent: the version it was trained from, or None (the first).
        created: when it was made, in seconds since the epoch.
        status: ``ready`` (every version listed is).
        metrics: the scores recorded with it (held-out accuracy by batch, ...).
        decision: what the promotion rule decided (``promoted``, ``kept``, ...).
        reason: why, in words.
        promoted: whether it is the version served now.
        batches: the batches it learned and was scored on.
    """

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

    Args:
        path: the store's folder.

    Raises:
        StoreError: ``path`` is not a store, or its database cannot be read.

    >>> import tempfile, torch
    >>> from retain.models import make_model
    >>> store = ModelStore.create(tempfile.mkdtemp() + "/store", config={"name": "demo"})
    >>> from retain.engine import Learner
    >>> learner = Learner(make_model("mlp", (4,), 3, hidden=(8,)), device="cpu")
    >>> v1 = store.add_version(learner, metrics={"acc": 0.5}, decision="promoted", reason="first version")
    >>> store.promote(v1); store.promoted()
    1
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if (self.path / URL_FILE).is_file():
            self.url = database_url((self.path / URL_FILE).read_text().strip())
        elif (self.path / SQLITE).is_file():
            self.url = database_url(f"sqlite:///{self.path / SQLITE}")
        else:
            raise StoreError(f"{self.path} is not a model store ({SQLITE} is missing); make one with retain init")
        if self.url.get_backend_name() == "sqlite" and not Path(self.url.database or "").is_file():
            raise StoreError(f"{self.path}: its database {self.url.database} is missing")
        self._engine = _engine(self.url)
        try:
            with self._db() as db:
                row = db.execute(select(META.c.value).where(META.c.key == "format")).first()
            tables = inspect(self._engine).get_table_names() if row is not None else []
            if row is not None and not {"leases", "pending", "shadow"} <= set(tables):  # a store made before them
                with self._engine.connect().execution_options(write=True) as db, db.begin():
                    _create_tables(db)
            if row is not None:
                self._unique_labels()
        except DatabaseError as err:
            raise StoreError(f"{self.path}: its database {self.where} cannot be read: "
                             f"{str(err.orig).strip().splitlines()[0]}") from None
        if row is None or int(row[0]) != FORMAT:
            raise StoreError(f"{self.path}: unsupported store format {row[0] if row else None!r}")
        self.intake = Intake(self._db, self._transaction)

    @property
    def where(self) -> str:
        """The database, for messages (no password)."""
        return self.url.render_as_string(hide_password=True)

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any], database: str | None = None) -> ModelStore:
        """A new, empty store at ``path`` (a folder that does not exist or is empty); its database is
        ``path/store.db`` (SQLite), or the empty database at the SQLAlchemy URL ``database``
        (PostgreSQL: ``postgresql://user@host/db``; a password is best left to ``PGPASSWORD``).

        Args:
            path: the new store's folder.
            config: the store's config, kept as JSON.
            database: an SQLAlchemy URL of an empty database; None: SQLite in the folder.

        Returns:
            The new store, opened.

        Raises:
            StoreError: the folder holds files, or the database a store, or cannot be used.
        """
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise StoreError(f"{path} already holds files; a new store needs a new or empty folder")
        url = database_url(database or f"sqlite:///{path / SQLITE}")
        where = url.render_as_string(hide_password=True)
        existed = path.exists()
        (path / "versions").mkdir(parents=True, exist_ok=True)
        engine = _engine(url)
        try:
            with engine.connect().execution_options(write=True) as db, db.begin():
                if inspect(db).has_table("meta"):
                    raise StoreError(f"{where} already holds a model store; each store needs its own database")
                _create_tables(db)
                db.execute(insert(META), [{"key": "format", "value": str(FORMAT)},
                                          {"key": "config", "value": json.dumps(config)},
                                          {"key": "promoted", "value": ""}])
            if database:
                from retain.engine.persist import durable_write

                durable_write(path / URL_FILE, (url.render_as_string(hide_password=False) + "\n").encode())
            return cls(path)
        except BaseException as err:  # leave nothing behind: the same command can run again
            for entry in path.iterdir() if existed else [path]:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            if isinstance(err, DatabaseError):
                raise StoreError(f"cannot use {where}: {str(err.orig).strip().splitlines()[0]}") from None
            raise
        finally:
            engine.dispose()

    @contextlib.contextmanager
    def _db(self) -> Iterator[Connection]:
        """A connection for reading: it sees the last commit, and never waits for a writer."""
        with self._engine.connect() as db:
            yield db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One write transaction at a time: SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's lock on the
        format row; all of it commits, or none of it."""
        with self._engine.connect().execution_options(write=True) as db, db.begin():
            if self.url.get_backend_name() == "postgresql":
                db.execute(select(META.c.value).where(META.c.key == "format").with_for_update())
            yield db

    @property
    def config(self) -> dict[str, Any]:
        config = self._meta("config")
        if config is None:  # create() writes it with the store's first record: the records are damaged
            raise StoreError("the store's records hold no config (retain init writes one): its database is damaged")
        loaded: dict[str, Any] = json.loads(config)
        return loaded

    def set_config(self, config: dict[str, Any], why: str) -> None:
        """Replace the store's config (retuned knobs, say), logged with ``why``.

        Args:
            config: the new config.
            why: the reason, for the store's log.
        """
        with self._transaction() as db:
            self._put_meta(db, "config", json.dumps(config))
            self._event(db, "config", why, None)

    def _meta(self, key: str, db: Connection | None = None) -> str | None:
        if db is None:
            with self._db() as db:
                return self._meta(key, db)
        row = db.execute(select(META.c.value).where(META.c.key == key)).first()
        return None if row is None else row[0]

    def folder(self, version: int) -> Path:
        """Where ``version``'s model is saved.

        Args:
            version: a version's number.

        Returns:
            ``path/versions/<version>``.
        """
        return self.path / "versions" / str(version)

    def add_version(self, learner: Learner | GenerativeLearner[Any] | DetectionLearner, *, parent: int | None = None,
                    metrics: dict[str, Any] | None = None, batches: Sequence[Batch] = (), decision: str = "",
                    reason: str = "", promote: bool = False, labels: list[str] | None = None,
                    carried: Sequence[str] = (), pending: Pending | None = None, feedback: Sequence[int] = ()) -> int:
        """Save ``learner`` as a new version and record what it was made from; with ``promote``
        it becomes the promoted one in the same transaction that records it. In that transaction
        too: the label names it knows (``labels``: ids never change), the pending batches it learned
        (``carried``: learned if promoted, else still waiting), the new batch's rows if it is kept
        (``pending``), and the service's ``feedback`` rows it learned (learned only if promoted).

        Args:
            learner: the model to save.
            parent: the version it was trained from, or None.
            metrics: its scores, kept as JSON.
            batches: the batches it learned and was scored on.
            decision: what the promotion rule decided.
            reason: why, in words.
            promote: make it the version served.
            labels: the label names it knows, by class id (None: unchanged).
            carried: the pending batches it learned.
            pending: the new batch, when the version is kept.
            feedback: the ids of the feedback rows it learned.

        Returns:
            The new version's number.

        Raises:
            StoreError: ``parent`` is not a ready version.
        """
        with self._transaction() as db:
            if parent is not None and not self._ready(db, parent):
                raise StoreError(f"parent version {parent} is not a ready version of this store")
            key = db.execute(insert(VERSIONS).values(parent=parent, created=time.time(), status="writing")
                             ).inserted_primary_key
            assert key is not None  # a one-row insert has its key
            version: int = key[0]
        learner.save(self.folder(version))
        with self._transaction() as db:
            db.execute(update(VERSIONS).where(VERSIONS.c.id == version).values(
                status="ready", metrics=json.dumps(metrics or {}), decision=decision, reason=reason))
            if batches:
                db.execute(insert(BATCHES), [{"version": version, "sha256": b.sha256, "rows": b.rows,
                                              "source": b.source, "role": b.role} for b in batches])
            self._event(db, "version", decision or "saved", version)
            if labels is not None:
                self._put_labels(db, labels)
            if promote:
                self._settle(db, list(carried), version, list(feedback))
                self._point_at(db, version, reason or "promoted")
            elif pending is not None:
                db.execute(insert(PENDING).values(
                    name=pending.name, at=time.time(), version=version, source=pending.source, rows=pending.rows,
                    status=pending.status, feedback=json.dumps(list(feedback)) if feedback else None,
                    detail=pending.detail))
                if feedback:
                    self._feedback_status(db, list(feedback), pending.status, version)
                self._event(db, "pending", f"{pending.name} ({pending.rows} rows of {pending.source}): "
                                           f"{pending.status}", version)
        return version

    def _settle(self, db: Connection, names: list[str], version: int, feedback: list[int]) -> None:
        """Pending batches ``names`` and feedback rows learned by the promoted ``version``."""
        ids = list(feedback)
        for name in names:
            row = db.execute(select(PENDING.c.feedback).where(PENDING.c.name == name)).first()
            ids += json.loads(row[0]) if row is not None and row[0] else []
            db.execute(update(PENDING).where(PENDING.c.name == name).values(status="learned", learned_by=version))
        if ids:
            self._feedback_status(db, ids, "learned", version)

    @staticmethod
    def _feedback_status(db: Connection, ids: list[int], status: str, version: int | None) -> None:
        from retain.store.intake import FEEDBACK

        for start in range(0, len(ids), 500):
            db.execute(update(FEEDBACK).where(FEEDBACK.c.id.in_(ids[start:start + 500]))
                       .values(status=status, version=version))

    def pending(self, status: str | tuple[str, ...] = ("pending", "held")) -> list[Pending]:
        """The batches whose candidates were kept, with ``status`` (default: those still waiting),
        oldest first.

        Args:
            status: a status, or several (:data:`KEPT`, ``learned``).

        Returns:
            The batches, oldest first.
        """
        statuses = (status,) if isinstance(status, str) else status
        with self._db() as db:
            rows = db.execute(select(*PENDING.c).where(PENDING.c.status.in_(statuses)).order_by(PENDING.c.at)).all()
        return [Pending(r.name, r.at, r.version, r.source, r.rows, r.status, r.learned_by,
                        json.loads(r.feedback) if r.feedback else [], r.detail) for r in rows]

    def add_pending(self, pending: Pending, version: int) -> None:
        """Record rows that wait to be learned though no version kept them (quarantined rows released).

        Args:
            pending: the batch (its ``name``, ``source``, ``rows``, ``status`` and ``detail``).
            version: the version it is recorded with.
        """
        with self._transaction() as db:
            db.execute(insert(PENDING).values(name=pending.name, at=time.time(), version=version, source=pending.source,
                                              rows=pending.rows, status=pending.status, detail=pending.detail))
            self._event(db, "pending", f"{pending.name} ({pending.rows} rows of {pending.source}): {pending.status}",
                        version)

    def set_pending(self, name: str, status: str, why: str) -> None:
        """Mark the pending batch ``name`` pending (carry it), held or dropped, logged with ``why``;
        its feedback rows follow.

        Args:
            name: the batch's name.
            status: one of :data:`KEPT`.
            why: the reason, for the store's log.

        Raises:
            StoreError: another status, or ``name`` is not a batch waiting to be learned.
        """
        if status not in KEPT:
            raise StoreError(f"a pending batch can be made one of {', '.join(KEPT)}, not {status!r}")
        with self._transaction() as db:
            row = db.execute(select(PENDING.c.status, PENDING.c.feedback, PENDING.c.version)
                             .where(PENDING.c.name == name)).first()
            if row is None or row.status == "learned":
                waiting = ", ".join(p.name for p in self.pending(KEPT)) or "none"
                raise StoreError(f"{name} is not a batch waiting to be learned (those waiting or dropped: {waiting})")
            db.execute(update(PENDING).where(PENDING.c.name == name).values(status=status, detail=why))
            if row.feedback:
                self._feedback_status(db, json.loads(row.feedback), status, row.version)
            self._event(db, "pending", f"{name}: {status} ({why})", row.version)

    @staticmethod
    def _event(db: Connection, kind: str, detail: str, version: int | None) -> None:
        db.execute(insert(EVENTS).values(at=time.time(), version=version, kind=kind, detail=detail))

    def _point_at(self, db: Connection, version: int, reason: str) -> None:
        db.execute(update(META).where(META.c.key == "promoted").values(value=str(version)))
        self._event(db, "promote", reason, version)
        # kept batches the new served line learned (a kept version promoted by hand or from shadow)
        line: list[int] = []
        parent: int | None = version
        while parent is not None:
            line.append(parent)
            parent = db.execute(select(VERSIONS.c.parent).where(VERSIONS.c.id == parent)).scalar()
        learned = db.execute(select(PENDING.c.name).join(BATCHES, BATCHES.c.source == PENDING.c.name).where(
            BATCHES.c.role == "held_out", BATCHES.c.version.in_(line), PENDING.c.status != "learned")).scalars().all()
        if learned:
            self._settle(db, sorted(set(learned)), version, [])

    @staticmethod
    def _ready(db: Connection, version: int) -> bool:
        return db.execute(select(VERSIONS.c.status).where(VERSIONS.c.id == version)).scalar() == "ready"

    def promote(self, version: int, reason: str = "promoted") -> None:
        """Make ``version`` the one served: one transaction moves the pointer.

        Args:
            version: a ready version's number.
            reason: why, for the store's log.

        Raises:
            StoreError: ``version`` is not a ready version.
        """
        with self._transaction() as db:
            if not self._ready(db, version):
                raise StoreError(f"version {version} is not a ready version of this store")
            self._point_at(db, version, reason)

    def promoted(self) -> int | None:
        """The version served now (None before the first promotion).

        Returns:
            Its number, or None.
        """
        value = self._meta("promoted")
        return int(value) if value else None

    def rollback(self, version: int | None = None) -> int:
        """Promote ``version``, or by default the parent of the promoted one; returns it.

        Args:
            version: the version to serve; None: the promoted one's parent.

        Returns:
            The version served now.

        Raises:
            StoreError: nothing to roll back to, or ``version`` is not a ready version.
        """
        current = self.promoted()
        if version is None:
            if current is None:
                raise StoreError("nothing is promoted yet: nothing to roll back")
            version = self.version(current).parent
            if version is None:
                raise StoreError(f"version {current} has no parent to roll back to")
        self.promote(version, reason=f"rollback from {current}")
        return version

    def load(self, version: int | None = None,
             device: str = "auto") -> Learner | GenerativeLearner[Any] | DetectionLearner:
        """The learner of ``version`` (default: the promoted one), verified as ``Learner.load`` does.

        Args:
            version: a ready version's number; None: the promoted one.
            device: where the learner runs (``auto``, ``cpu``, ``cuda``, ...).

        Returns:
            The learner, of the kind its save records.

        Raises:
            StoreError: no version is promoted, or ``version`` is not a ready version.
        """
        version = self.promoted() if version is None else version
        if version is None:
            raise StoreError(f"{self.path}: no version is promoted yet")
        with self._db() as db:
            if not self._ready(db, version):
                raise StoreError(f"version {version} is not a ready version of this store")
        from retain.engine.persist import load_learner

        return load_learner(self.folder(version), device=device)  # of the kind its save records

    def newest_kept(self, parent: int) -> int | None:
        """The newest ready version made from ``parent`` that the rule kept (a candidate for shadow).

        Args:
            parent: a version's number.

        Returns:
            That version's number, or None.
        """
        with self._db() as db:
            return db.execute(select(VERSIONS.c.id).where(
                VERSIONS.c.parent == parent, VERSIONS.c.status == "ready", VERSIONS.c.decision == "kept")
                .order_by(VERSIONS.c.id.desc()).limit(1)).scalar()

    def version(self, version: int) -> Version:
        """The record of one ready version.

        Args:
            version: its number.

        Returns:
            The version's record.

        Raises:
            StoreError: no ready version has that number.
        """
        found = [v for v in self.versions() if v.id == version]
        if not found:
            raise StoreError(f"{self.path} has no ready version {version}")
        return found[0]

    def versions(self) -> list[Version]:
        """Every ready version, oldest first, with its batches and whether it is promoted.

        Returns:
            The versions' records, oldest first.
        """
        with self._db() as db, db.begin():  # one snapshot: the pointer and the rows agree
            value = self._meta("promoted", db)
            rows = db.execute(select(VERSIONS.c.id, VERSIONS.c.parent, VERSIONS.c.created, VERSIONS.c.status,
                                     VERSIONS.c.metrics, VERSIONS.c.decision, VERSIONS.c.reason)
                              .where(VERSIONS.c.status == "ready").order_by(VERSIONS.c.id)).all()
            batches = db.execute(select(BATCHES.c.version, BATCHES.c.sha256, BATCHES.c.rows, BATCHES.c.source,
                                        BATCHES.c.role).order_by(BATCHES.c.id)).all()
        promoted = int(value) if value else None
        out = []
        for id_, parent, created, status, metrics, decision, reason in rows:
            out.append(Version(id_, parent, created, status, json.loads(metrics), decision, reason, id_ == promoted,
                               [Batch(h, n, s, r) for v, h, n, s, r in batches if v == id_]))
        return out

    def meta(self, key: str) -> Any:
        """A value kept with :meth:`set_meta` (None if none).

        Args:
            key: the value's name.

        Returns:
            The value, or None.
        """
        value = self._meta(f"user.{key}")
        return None if value is None else json.loads(value)

    def set_meta(self, key: str, value: Any) -> None:
        """Keep a JSON value under ``key`` (what the store's inputs look like, say).

        Args:
            key: the value's name.
            value: anything JSON holds.
        """
        with self._transaction() as db:
            self._put_meta(db, f"user.{key}", json.dumps(value))

    def _put_meta(self, db: Connection, key: str, value: str) -> None:
        if self._meta(key, db) is None:
            db.execute(insert(META).values(key=key, value=value))
        else:
            db.execute(update(META).where(META.c.key == key).values(value=value))

    def labels(self) -> list[str]:
        """The label name of each class id, stable across versions.

        Returns:
            The names, by class id ([] before any is recorded).
        """
        value = self._meta("labels")
        return json.loads(value) if value else []

    def set_labels(self, names: list[str]) -> None:
        """Record the label names; ids once given never change (the list only grows).

        Args:
            names: every label name, by class id.

        Raises:
            StoreError: ``names`` does not start with the names recorded.
        """
        with self._transaction() as db:
            self._put_labels(db, names)

    def _put_labels(self, db: Connection, names: list[str]) -> None:
        value = self._meta("labels", db)
        known = json.loads(value) if value else []
        if names[:len(known)] != known:
            raise StoreError(f"label ids must stay as they are: the store has {known}, got {names}")
        self._put_meta(db, "labels", json.dumps(names))

    def _unique_labels(self) -> None:
        """One label per prediction, kept by the database (a unique index on the feedback's request
        id: concurrent posts cannot both label it). Made on stores created before it, unless their
        feedback already labels a prediction twice (then the service's check alone guards them)."""
        with self._db() as db:
            if any(i["name"] == "feedback_request" for i in inspect(db).get_indexes("feedback")):
                return
        with contextlib.suppress(DatabaseError), self._transaction() as db:
            db.exec_driver_sql("CREATE UNIQUE INDEX IF NOT EXISTS feedback_request ON feedback (request_id)")

    def put_data(self, name: str, tensors: dict[str, Any], kind: str = "data") -> None:
        """Keep tensors under ``name``, written whole or not at all: a batch's held-out rows
        (``data``: read only once a ready version records the batch), or rows the gate set aside
        for review (``quarantine``, never deleted).

        Args:
            name: the batch's name.
            tensors: the tensors, by name.
            kind: ``data`` or ``quarantine``.
        """
        from safetensors.torch import save

        folder = self.path / kind
        folder.mkdir(exist_ok=True)
        from retain.engine.persist import durable_write

        durable_write(folder / f"{name}.tmp", save({k: v.contiguous() for k, v in tensors.items()}))
        os.replace(folder / f"{name}.tmp", folder / f"{name}.safetensors")
        fd = os.open(folder, os.O_RDONLY)  # the new name is on the disk before a version can refer to it
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def held_out_names(self, versions: list[int] | None = None) -> list[str]:
        """The held-out batches ready versions record (only those of ``versions`` when given), in the
        order the versions that brought them were made.

        Args:
            versions: only the batches these versions record; None: every ready version's.

        Returns:
            The batches' names.
        """
        with self._db() as db:
            rows = db.execute(select(BATCHES.c.source, BATCHES.c.version).distinct()
                              .join(VERSIONS, VERSIONS.c.id == BATCHES.c.version)
                              .where(BATCHES.c.role == "held_out", VERSIONS.c.status == "ready")).all()
        first: dict[str, int] = {}
        for name, v in rows:
            if versions is None or v in versions:
                first[name] = min(v, first.get(name, v))
        return sorted(first, key=lambda name: (first[name], name))  # in the order the versions learned them

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """One writer at a time (an advisory lock on ``writer.lock``); readers are never blocked.

        Yields:
            Nothing: the lock is held while the block runs.
        """
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

    def drop_data(self, name: str, kind: str = "data") -> None:
        """Delete the tensors kept under ``name`` (quarantined rows a reviewer dropped).

        Args:
            name: the batch's name.
            kind: ``data`` or ``quarantine``.
        """
        (self.path / kind / f"{name}.safetensors").unlink(missing_ok=True)

    def data_rows(self, name: str, kind: str = "data") -> int:
        """How many rows the tensors kept under ``name`` hold, read from the file's header (no torch).

        Args:
            name: the batch's name.
            kind: ``data`` or ``quarantine``.

        Returns:
            The rows of its labels (or a translation's texts), else of its smallest tensor.
        """
        with open(self.path / kind / f"{name}.safetensors", "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        shapes = {key: value["shape"] for key, value in header.items() if key != "__metadata__"}
        for key in ("y", "source_len"):  # a classifier's labels; a translation's lengths of its texts
            if key in shapes:
                rows: int = shapes[key][0]
                return rows
        return min((shape[0] for shape in shapes.values() if shape), default=0)

    def data_names(self, kind: str = "data") -> list[str]:
        """The names of the tensors kept with :meth:`put_data`, sorted.

        Args:
            kind: ``data`` or ``quarantine``.

        Returns:
            The batches' names.
        """
        return sorted(p.stem for p in (self.path / kind).glob("*.safetensors"))

    def get_data(self, name: str, kind: str = "data") -> dict[str, Any]:
        """The tensors kept under ``name`` with :meth:`put_data`.

        Args:
            name: the batch's name.
            kind: ``data`` or ``quarantine``.

        Returns:
            The tensors, by name.
        """
        from safetensors.torch import load_file

        return load_file(self.path / kind / f"{name}.safetensors")

    def log(self, kind: str, detail: str, version: int | None = None) -> None:
        """Add an event to the store's log (a gate decision, say).

        Args:
            kind: what happened (``gate``, ``version``, ...).
            detail: the event, in words.
            version: the version it concerns, or None.
        """
        with self._transaction() as db:
            self._event(db, kind, detail, version)

    def events(self) -> list[tuple[float, int | None, str, str]]:
        """The store's log: versions saved, promotions, rollbacks, with their reasons.

        Returns:
            A ``(time, version, kind, detail)`` row per event, oldest first.
        """
        with self._db() as db:
            rows = db.execute(select(EVENTS.c.at, EVENTS.c.version, EVENTS.c.kind, EVENTS.c.detail)
                              .order_by(EVENTS.c.id)).all()
        return [tuple(r) for r in rows]
