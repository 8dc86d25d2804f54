"""The service's records in a store's database: the feedback queue, the predictions log, the updater's lease.

Labelled rows sent back are acknowledged once committed; predictions made under a request id are
kept so that feedback can name them; the lease lets one updater write at a time across processes
and hosts. :class:`~retain.store.ModelStore` creates these tables beside its versions and hands
out an :class:`Intake` on them (``store.intake``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, Float, Index, Integer, MetaData, Table, Text, func, insert, select, update
from sqlalchemy.exc import IntegrityError

TABLES = MetaData()
FEEDBACK = Table(
    "feedback", TABLES, Column("id", Integer, primary_key=True), Column("at", Float, nullable=False),
    Column("request_id", Text), Column("inputs", Text, nullable=False), Column("label", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="queued"), Column("version", Integer),
    Index("feedback_status", "status", "id"),
    Index("feedback_request", "request_id", unique=True))  # one label per prediction, even under concurrent posts
PREDICTIONS = Table(
    "predictions", TABLES, Column("id", Text, primary_key=True), Column("at", Float, nullable=False),
    Column("version", Integer, nullable=False), Column("inputs", Text, nullable=False),
    Column("label", Text, nullable=False))
SHADOW = Table(  # what a candidate served in shadow answered to a prediction made under a request id
    "shadow", TABLES, Column("id", Text, primary_key=True), Column("at", Float, nullable=False),
    Column("version", Integer, nullable=False), Column("label", Text, nullable=False))
LEASES = Table("leases", TABLES, Column("name", Text, primary_key=True), Column("holder", Text, nullable=False),
               Column("expires", Float, nullable=False))

Connect = Callable[[], AbstractContextManager[Connection]]

Score = Callable[[str, str], float]  # how right an answer is, given the label: 0 to 1


def same(answer: str, label: str) -> float:
    """1 for the label itself, else 0: how a class is scored (a kind writing answers scores them its way)."""
    return float(answer == label)


@dataclass
class Feedback:
    """A labelled row sent back to the store: its inputs (JSON), label name and what became of it.

    Attributes:
        id: the row's id, in the order rows came.
        at: when it came, in seconds since the epoch.
        request_id: the id of the prediction it labels, or None (a row sent with its input).
        inputs: the row's input, as JSON text.
        label: its label name (a written answer: the answer; boxes: their JSON).
        status: ``queued``, ``learned`` (by a promoted version), ``pending``, ``held`` or ``dropped`` (its
            version was kept), or ``refused`` (by the gate, kept for review).
        version: the version that learned, kept or refused it; None while queued.
    """

    id: int
    at: float
    request_id: str | None
    inputs: str
    label: str
    status: str  # queued; learned (by a promoted version); pending, held or dropped (its version was kept:
    # see ModelStore.pending); refused (by the gate; kept for review)
    version: int | None


class AlreadyLabelled(ValueError):
    """A prediction that feedback labels a second time (one label a prediction)."""


class Intake:
    """The feedback, predictions and leases of one store, read and written through the store's own
    connections: ``read`` sees the last commit, ``write`` is one transaction at a time.

    Args:
        read: opens a connection for reading.
        write: opens a connection in a write transaction, one at a time.
    """

    def __init__(self, read: Connect, write: Connect) -> None:
        self._db, self._transaction = read, write

    def add_feedback(self, rows: list[dict[str, Any]]) -> list[int]:
        """Keep labelled rows (``inputs`` as JSON text, ``label``, optional ``request_id``) in one
        transaction; their ids once it has committed (durable: acknowledge them then).

        Args:
            rows: the rows, each with ``inputs``, ``label`` and maybe ``request_id``.

        Returns:
            Their ids, in the rows' order.

        Raises:
            AlreadyLabelled: one of the rows labels a prediction that feedback labelled already.
        """
        now = time.time()
        try:
            return self._add_feedback(rows, now)
        except IntegrityError:  # the unique request id: another post labelled one of them first
            taken = sorted(self.labelled([r["request_id"] for r in rows if r.get("request_id")]))
            raise AlreadyLabelled(f"the prediction {taken[0] if taken else '?'!r} is labelled already") from None

    def _add_feedback(self, rows: list[dict[str, Any]], now: float) -> list[int]:
        with self._transaction() as db:
            ids = db.execute(insert(FEEDBACK).returning(FEEDBACK.c.id, sort_by_parameter_order=True),
                             [{"at": now, "request_id": r.get("request_id"), "inputs": r["inputs"],
                               "label": r["label"], "status": "queued"} for r in rows]).scalars().all()
        return list(ids)

    def feedback(self, status: str | None = "queued", limit: int | None = None) -> list[Feedback]:
        """Feedback rows (those with ``status``; None: all), oldest first.

        Args:
            status: the status of the rows wanted; None: every row.
            limit: at most this many rows; None: all.

        Returns:
            The rows, oldest first.
        """
        query = select(*FEEDBACK.c).order_by(FEEDBACK.c.id).limit(limit)
        if status is not None:
            query = query.where(FEEDBACK.c.status == status)
        with self._db() as db:
            return [Feedback(*row) for row in db.execute(query).all()]

    def queue(self) -> tuple[dict[str, int], float | None]:
        """The queued feedback at a glance: rows by label, and when the oldest came (no inputs read).

        Returns:
            The queued rows' count by label, and the time the oldest came (None: none is queued).
        """
        with self._db() as db:
            rows = db.execute(select(FEEDBACK.c.label, func.count(), func.min(FEEDBACK.c.at))
                              .where(FEEDBACK.c.status == "queued").group_by(FEEDBACK.c.label)).all()
        return {label: n for label, n, _ in rows}, min((at for _, _, at in rows), default=None)

    def feedback_counts(self) -> dict[str, int]:
        """How many feedback rows are queued, learned, refused.

        Returns:
            The number of rows by status (a status no row has is left out).
        """
        with self._db() as db:
            rows = db.execute(select(FEEDBACK.c.status, func.count()).group_by(FEEDBACK.c.status)).all()
        return {status: n for status, n in rows}

    def settle_feedback(self, ids: list[int], status: str, version: int | None = None) -> None:
        """Mark feedback rows refused (a version that learns or keeps them settles them with itself:
        :meth:`ModelStore.add_version`).

        Args:
            ids: the feedback rows' ids.
            status: what becomes of them (``refused``).
            version: the version that settled them, or None.
        """
        with self._transaction() as db:
            for start in range(0, len(ids), 500):
                db.execute(update(FEEDBACK).where(FEEDBACK.c.id.in_(ids[start:start + 500]))
                           .values(status=status, version=version))

    def add_predictions(self, rows: list[dict[str, Any]]) -> None:
        """Keep predictions made under a request id (``id``, ``version``, ``inputs``, ``label``).

        Args:
            rows: the predictions, each with those four keys.
        """
        now = time.time()
        with self._transaction() as db:
            db.execute(insert(PREDICTIONS), [r | {"at": now} for r in rows])

    def predictions(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The kept predictions of these request ids, by id.

        Args:
            ids: request ids (one never used is left out of the answer).

        Returns:
            Each kept prediction's columns (``id``, ``at``, ``version``, ``inputs``, ``label``), by its id.
        """
        with self._db() as db:
            rows = db.execute(select(*PREDICTIONS.c).where(PREDICTIONS.c.id.in_(ids))).all()
        return {r.id: r._asdict() for r in rows}

    def add_shadow(self, rows: list[dict[str, Any]]) -> None:
        """Keep what a candidate served in shadow answered (``id``: the prediction's, ``version``, ``label``).

        Args:
            rows: the answers, each with those three keys.
        """
        now = time.time()
        with self._transaction() as db:
            db.execute(insert(SHADOW), [r | {"at": now} for r in rows])

    def shadow_hits(self, version: int, score: Score = same) -> tuple[list[float], list[float]]:
        """For each prediction the candidate ``version`` answered in shadow and feedback later
        labelled: how right the candidate was, and how right the served version was (``score``
        of an answer and the label: 1 or 0 for a class, a transcript's ``1 − WER``).

        Args:
            version: the candidate served in shadow.
            score: how right an answer is given the label, 0-1.

        Returns:
            The candidate's scores and the served version's, a pair per labelled prediction, oldest first.
        """
        query = (select(SHADOW.c.label, PREDICTIONS.c.label, FEEDBACK.c.label)
                 .join(FEEDBACK, FEEDBACK.c.request_id == SHADOW.c.id)
                 .join(PREDICTIONS, PREDICTIONS.c.id == SHADOW.c.id)
                 .where(SHADOW.c.version == version).order_by(FEEDBACK.c.id))
        with self._db() as db:
            rows = db.execute(query).all()
        return [score(a, label) for a, _, label in rows], [score(b, label) for _, b, label in rows]

    def labelled(self, ids: list[str]) -> set[str]:
        """Those of the request ids that feedback has labelled already.

        Args:
            ids: request ids.

        Returns:
            The ids labelled already.
        """
        with self._db() as db:
            rows = db.execute(select(FEEDBACK.c.request_id).where(FEEDBACK.c.request_id.in_(ids))).all()
        return {r[0] for r in rows}

    def prequential(self, score: Score = same) -> list[tuple[float, int, float]]:
        """(time of the feedback, version that predicted, how right it was: ``score`` of its answer and
        the label) for every prediction later labelled by feedback, oldest first: the score on data
        as it arrives.

        Args:
            score: how right an answer is given the label, 0-1.

        Returns:
            A ``(time, version, score)`` triple per labelled prediction, oldest feedback first.
        """
        query = (select(FEEDBACK.c.at, PREDICTIONS.c.version, PREDICTIONS.c.label, FEEDBACK.c.label)
                 .join(PREDICTIONS, PREDICTIONS.c.id == FEEDBACK.c.request_id).order_by(FEEDBACK.c.id))
        with self._db() as db:
            return [(at, v, score(answer, label)) for at, v, answer, label in db.execute(query).all()]

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``seconds``: True if ``holder`` holds it now. Only
        one holder at a time across processes and hosts (the updater's: one writer).

        Args:
            name: the lease's name (``updater``).
            holder: who asks (host, process and a random part).
            seconds: how long the lease lasts unless renewed.

        Returns:
            True when ``holder`` holds the lease now; False when another holder's has not expired.
        """
        now = time.time()
        with self._transaction() as db:
            row = db.execute(select(LEASES.c.holder, LEASES.c.expires).where(LEASES.c.name == name)).first()
            if row is None:
                db.execute(insert(LEASES).values(name=name, holder=holder, expires=now + seconds))
                return True
            if row.holder != holder and row.expires > now:
                return False
            db.execute(update(LEASES).where(LEASES.c.name == name).values(holder=holder, expires=now + seconds))
            return True

    def release(self, name: str, holder: str) -> None:
        """Give the lease back (if ``holder`` holds it).

        Args:
            name: the lease's name.
            holder: who gives it back.
        """
        with self._transaction() as db:
            db.execute(update(LEASES).where(LEASES.c.name == name, LEASES.c.holder == holder).values(expires=0.0))
