"""The feedback queue and the background updater that learns it, in the process holding the store's lease.

Feedback is acknowledged once committed to the store's database, and scored against the prediction
it labels (test-then-train: accuracy, drift). The updater runs in a background thread of the
process holding the store's ``updater`` lease (one writer across processes and hosts); it takes the
queued feedback through the gate and the promotion rule with :meth:`Project.learn` (labels) or
:meth:`Project.learn_rows` (a translation store's post-edits), as ``retain update`` does with a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from retain.config import ServiceConfig
from retain.data.files import InputError
from retain.engine.updater import Hybrid
from retain.loop import Project
from retain.service.metrics import ServiceMetrics
from retain.service.schemas import FeedbackRequest, problem
from retain.service.served import Served
from retain.store.intake import AlreadyLabelled
from retain.tasks.base import TooFewRows

LEASE = "updater"
log = logging.getLogger("retain.service")


class Updater:
    """Takes feedback, and learns it when an update is due (see the module docstring)."""

    def __init__(self, project: Project, served: Served, settings: ServiceConfig, metrics: ServiceMetrics) -> None:
        self.project, self.store, self.served = project, project.store, served
        self.settings, self.metrics = settings, metrics
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.updating = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.last_update: dict[str, Any] | None = None
        self.tried = 0.0  # when the last update began (rows too few to learn are tried again after update_wait)
        self.drift_signal = False
        self.stalled_at: int | None = None  # queued rows when an update last found nothing it could learn
        self.shadow_state: dict[str, Any] | None = None  # the candidate in shadow, as last judged
        self.detector = Hybrid(drift=settings.drift).detector() if settings.drift else None
        self.labelled = 0  # predictions later labelled in this process
        self.correct: float = 0  # and how right they were: 1 each, or a written answer's score
        self.waiting_for: str | None = None  # the other process holding the lease, while this one waits

    # -- feedback -----------------------------------------------------------------------
    def feedback(self, request: FeedbackRequest) -> dict[str, Any]:
        """Keep the rows, all or none; each labelling an earlier prediction scores it."""
        intake = self.store.intake
        ids = [r.id for r in request.rows if r.id is not None]
        known = intake.predictions(ids) if ids else {}
        labelled = intake.labelled(ids) if ids else set()
        rows: list[dict[str, Any]] = []
        data = []
        for i, row in enumerate(request.rows):
            if (row.id is None) == (row.input is None):
                raise problem(422, ["body", "rows", i], "give either the input or the id of a prediction")
            if row.id is not None and (row.id in labelled or ids.count(row.id) > 1):  # one label a prediction
                raise problem(409, ["body", "rows", i, "id"], f"the prediction {row.id!r} is labelled already")
            if row.input is None and row.id not in known:
                raise problem(404, ["body", "rows", i, "id"], f"no prediction has the id {row.id!r}")
            field = "boxes" if row.boxes is not None else "label"
            if field != self.project.kind.answer_field:
                raise problem(422, ["body", "rows", i, field], f"a {self.project.kind.name} store's feedback sends "
                              f"{self.project.kind.answer_field}")
            item = row.input.data() if row.input is not None else json.loads(known[str(row.id)]["inputs"])
            data.append(item)
            rows.append({"inputs": json.dumps(item), "label": row.answer(), "request_id": row.id})
        try:
            read = self.served.read(data, "rows")  # every row readable before any is kept
        except InputError as err:
            index = int(err.field.split(".")[1])
            raise problem(422, ["body", "rows", index, "input", err.field.split(".")[-1]], err.message) from None
        for i, kept in enumerate(rows):  # what the answers say, checked against their inputs (a box inside its image)
            why = self.project.kind.answer_problem(read, i, kept["label"])
            if why is not None:
                raise problem(422, ["body", "rows", i, self.project.kind.answer_field], why)
        try:
            stored = intake.add_feedback(rows)  # committed: acknowledged from here on
        except AlreadyLabelled as err:  # another post labelled it between the check above and now
            raise problem(409, ["body", "rows"], str(err)) from None
        self.metrics.feedback.inc(len(rows))
        for row in request.rows:  # test-then-train: was the earlier prediction right?
            if row.id in known:
                self._labelled(self.project.kind.answer_score(known[row.id]["label"], row.answer()))
        current = self.served.current
        labels = set(current.names) if current else set()
        answers = set(self.project.kind.answer_names(read, [r["label"] for r in rows]))  # a translation's: directions
        new = sorted(answers - labels) if labels or self.served.labels else []  # a transcript is no class
        return {"accepted": len(stored), "ids": stored, "new_classes": new}

    def _labelled(self, right: float) -> None:
        self.labelled += 1
        self.correct += right
        self.metrics.labelled.inc()
        self.metrics.correct.inc(right)  # a written answer or boxes count by their score (chrF, F1), not 0 or 1
        self.metrics.accuracy.set(self.correct / self.labelled)
        if self.detector is not None:
            self.detector.update(1.0 - right)
            if self.detector.drift_detected:
                self.metrics.drift.inc()
                current = self.served.current
                self.store.log("drift", "the error of labelled predictions rose", current.version if current else None)
                self.drift_signal = True

    # -- updates ------------------------------------------------------------------------
    def start(self) -> None:
        """Run updates in a background thread while this process holds the lease."""
        self.thread = threading.Thread(target=self._run, name="retain-updater", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop the thread and give the lease back."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            with contextlib.suppress(Exception):
                self.store.intake.release(LEASE, self.holder)

    def _run(self) -> None:
        ttl, held_until = max(30.0, 10 * self.settings.poll), 0.0
        while not self.stop.wait(self.settings.poll):
            try:
                if time.time() > held_until - ttl / 2:  # renewed when half its time is gone
                    if not self.store.intake.lease(LEASE, self.holder, seconds=ttl):
                        held_until = 0.0
                        self._waiting()
                        continue
                    held_until = time.time() + ttl
                    self._took()
                due = self.due()
                if due:
                    self.update(due)
                self.judge_shadow()
            except Exception as err:  # noqa: BLE001 - logged; the next round tries again
                log.exception("the update failed; the next round tries again")
                with contextlib.suppress(Exception):
                    self.store.log("updater", f"update failed: {type(err).__name__}: {err}")

    def judge_shadow(self) -> dict[str, Any] | None:
        """The candidate in shadow judged on the live rows labelled since it answered: promoted once
        they show it surely better (``service.shadow_rows`` of them at least). Returns what /state shows."""
        shadow = self.served.shadow
        if shadow is None:
            self.shadow_state = None
            return None
        right, served = hits = self.store.intake.shadow_hits(shadow.version, self.project.kind.answer_score)
        if self.shadow_state is not None and (shadow.version, len(right)) == (self.shadow_state["version"],
                                                                             self.shadow_state["rows"]):
            return self.shadow_state  # nothing labelled since the last round: the same verdict
        self.shadow_state = {"version": shadow.version, "rows": len(right), "needed": self.settings.shadow_rows,
                             "accuracy": sum(right) / len(right) if right else None,
                             "promoted_accuracy": sum(served) / len(served) if served else None}
        verdict = self.project.shadow_verdict(shadow.version, self.settings.shadow_rows, hits)
        if verdict is not None and verdict[0]:
            with self.updating:
                self.project.promote(shadow.version, verdict[1])
            log.info("promoted version %d from shadow: %s", shadow.version, verdict[1])
            self.served.refresh()
        return self.shadow_state

    def due(self) -> str | None:
        """Why an update should run now, or None."""
        by_label, oldest = self.store.intake.queue()
        queued = sum(by_label.values())
        self.metrics.queue.set(queued)
        if not queued:
            return None
        assert oldest is not None  # queued rows came at some time
        known = set(self.store.labels())
        fresh = {label: n for label, n in by_label.items() if label not in known and self.served.labels}
        judged = queued * self.project.held_out_fraction >= self.project.kind.rule.min_held_out
        if fresh and max(fresh.values()) >= self.settings.new_class_rows and judged:  # rows enough to judge it by
            return f"new class {max(fresh, key=fresh.__getitem__)}"
        if time.time() - oldest >= self.settings.update_wait and time.time() - self.tried >= self.settings.update_wait:
            return f"rows waited {self.settings.update_wait:g} s"  # however few: none waits for ever
        if queued < self.settings.min_rows:
            return None
        if self.stalled_at is not None and queued <= self.stalled_at:  # the last try could not learn these
            return None
        if queued >= self.settings.update_rows:
            return f"{queued} rows queued"
        if self.drift_signal:
            return "drift"
        return None

    def _learn(self, x: Any, answers: list[str], queued: list[Any]) -> tuple[Any, list[Any]]:
        """The queued rows through the gate and the promotion rule: labels, or corrected translations
        (post-edits) of texts into their languages. Returns the result and the rows it took: a
        translation store takes the directions with enough rows to judge, the others wait."""
        if not self.served.labels:
            rows, names = self.project.kind.with_answers(x, answers)
            take = self.project.kind.learnable(rows, self.project.held_out_fraction)
            taken = [queued[i] for i in take.tolist()]
            if not taken:
                raise TooFewRows(f"waiting for more corrections: too few to hold min_held_out "
                                 f"({self.project.config.min_held_out}) of them out yet ({self.project.kind.too_few})")
            source = f"feedback {taken[0].id}-{taken[-1].id}"
            return self.project.learn_rows(rows.take(take), names, source=source,
                                           feedback=[r.id for r in taken]), taken
        labels = self.project.labels()
        source = f"feedback {queued[0].id}-{queued[-1].id}"
        return self.project.learn(x, labels.names, labels.ids(answers), source=source,
                                  feedback=[r.id for r in queued]), queued

    def update(self, trigger: str = "asked") -> dict[str, Any]:
        """Learn the queued feedback now (one update at a time in this process)."""
        with self.updating:
            started = time.perf_counter()
            self.tried = time.time()
            queued = self.store.intake.feedback("queued", limit=50_000)
            if not queued:
                return {"version": None, "promoted": False, "reason": "no feedback is queued", "rows": 0}
            x = self.served.read([json.loads(r.inputs) for r in queued], "feedback")
            try:
                result, taken = self._learn(x, [r.label for r in queued], queued)
            except ValueError as err:  # too few rows to hold any out: wait for more (not tried again before)
                self.stalled_at = len(queued)
                self.last_update = {"version": None, "promoted": False, "reason": str(err), "rows": len(queued)}
                log.info("update (%s): %d rows wait: %s", trigger, len(queued), err)
                return self.last_update
            self.stalled_at = None
            ids = [r.id for r in taken]
            if result.version is None:  # a version settles its rows with itself: learned only if promoted
                self.store.intake.settle_feedback(ids, "refused")
            self.metrics.gate.labels(result.gate_decision or "accept").inc()
            outcome = "refused" if result.version is None else "promoted" if result.promoted else "kept"
            self.metrics.updates.labels(outcome).inc()
            self.drift_signal = False
            self.served.refresh()
            self.metrics.queue.set(len(self.store.intake.feedback("queued")))
            self.last_update = result.__dict__ | {"rows": len(taken), "trigger": trigger}
            self._updated(self.last_update, time.perf_counter() - started)
            return self.last_update

    # -- what the operator sees ---------------------------------------------------------
    def _updated(self, result: dict[str, Any], seconds: float) -> None:
        """Log an update's trigger and decision, and keep its duration for /metrics."""
        self.metrics.update_seconds.set(seconds)
        outcome = ("refused" if result["version"] is None else
                   f"version {result['version']} {'promoted' if result['promoted'] else 'kept'}")
        log.info("update (%s): %d rows -> %s: %s (%.1f s)", result["trigger"], result["rows"], outcome,
                 result["reason"], seconds)

    def _waiting(self) -> None:
        """Log, once per holder, that another process holds the updater's lease, and until when."""
        held = lease_holder(self.store, LEASE)
        if held is None or held[0] == self.waiting_for:
            return
        self.waiting_for = held[0]
        log.info("waiting for the updater lease: %s holds it until %s (in %.0f s); this process only "
                 "predicts and takes feedback until then", held[0],
                 time.strftime("%H:%M:%S", time.localtime(held[1])), max(0.0, held[1] - time.time()))

    def _took(self) -> None:
        """Log taking the updater's lease (after waiting for another process's)."""
        if self.waiting_for is not None:
            log.info("took the updater lease from %s: this process runs the updates now", self.waiting_for)
            self.waiting_for = None


def lease_holder(store: Any, name: str) -> tuple[str, float] | None:
    """Who holds the lease ``name`` and when it expires (seconds since the epoch), or None."""
    from sqlalchemy import select

    from retain.store.intake import LEASES

    with store.intake._db() as db:  # read only: Intake has no reader for a lease yet
        row = db.execute(select(LEASES.c.holder, LEASES.c.expires).where(LEASES.c.name == name)).first()
    return None if row is None else (row.holder, row.expires)
