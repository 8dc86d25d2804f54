"""The service's Prometheus metrics (prometheus-client), one registry per service.

With several worker processes (``retain serve --workers N``) prometheus-client's multiprocess mode
sums the workers' files in ``PROMETHEUS_MULTIPROC_DIR``; gauges then report the latest value.
What the store's database records (labelled predictions, pending and quarantined rows, the promoted
version's scores) is read from it, so a restarted service reports what the dashboard shows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from retain.store import ModelStore
from retain.store.intake import Score, same

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """Every metric ``GET /metrics`` shows."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        kw: dict[str, Any] = {"registry": None if self.multiprocess else self.registry}
        gauge: dict[str, Any] = {"multiprocess_mode": "mostrecent"} if self.multiprocess else {}
        self.requests = Counter("retain_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                **kw)
        self.latency = Histogram("retain_request_seconds", "request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, **kw)
        self.predictions = Counter("retain_predictions", "predictions made, by predicted class", ["label"], **kw)
        self.feedback = Counter("retain_feedback_rows", "labelled rows acknowledged (durably stored)", **kw)
        self.queue = Gauge("retain_queue_depth", "feedback rows waiting for an update", **kw, **gauge)
        self.updates = Counter("retain_updates", "updates run, by outcome (promoted, kept, refused)",
                               ["outcome"], **kw)
        self.update_seconds = Gauge("retain_update_seconds", "how long the last update took (gate, training, "
                                    "judging)", **kw, **gauge)
        self.gate = Counter("retain_gate_decisions", "data-quality gate decisions on feedback batches",
                            ["decision"], **kw)
        self.version = Gauge("retain_serving_version", "the model version answering predictions", **kw, **gauge)
        self.labelled = Counter("retain_prequential_labelled", "predictions later labelled by feedback", **kw)
        self.correct = Counter("retain_prequential_correct", "of those, predictions that were right (a written "
                               "answer or boxes: the sum of their scores)", **kw)
        self.accuracy = Gauge("retain_prequential_accuracy", "share of labelled predictions that were right",
                              **kw, **gauge)
        self.drift = Counter("retain_drift_alarms", "drift alarms on the prequential error", **kw)
        self.pending = Gauge("retain_pending_rows", "rows of batches whose candidate was kept, waiting for a "
                             "promoted version to learn them", **kw, **gauge)
        self.quarantined = Gauge("retain_quarantined_rows", "rows the data-quality gate set aside for review",
                                 **kw, **gauge)
        self.held_out = Gauge("retain_held_out_accuracy", "the promoted version's recorded held-out score "
                              "(0-1) by batch", ["batch"], **kw, **gauge)
        self._batches: set[str] = set()  # the batches of the held-out gauge
        self._quarantine_rows: dict[str, int] = {}  # rows of each quarantined batch (kept batches never change)

    def restore(self, labelled: list[tuple[float, int, float]]) -> None:
        """Start the prequential counters from the store's labelled predictions, not from zero (once
        per metrics folder when worker processes share one: their counters are summed)."""
        self.accuracy.set(sum(hit for *_, hit in labelled) / len(labelled) if labelled else 0.0)
        if self.multiprocess and not _first_in(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])):
            return
        self.labelled.inc(len(labelled))
        self.correct.inc(sum(hit for *_, hit in labelled))

    def read_store(self, store: ModelStore, score: Score = same) -> None:
        """Set the gauges that the store's records hold: the feedback queue, labelled predictions'
        accuracy, pending and quarantined rows, the promoted version's held-out scores."""
        self.queue.set(store.intake.feedback_counts().get("queued", 0))
        labelled = store.intake.prequential(score)
        if labelled:  # the dashboard's figure, whichever worker took the feedback
            self.accuracy.set(sum(hit for *_, hit in labelled) / len(labelled))
        pending = pending_rows(store)
        if pending is not None:
            self.pending.set(pending)
        self.quarantined.set(self.quarantined_rows(store))
        promoted = store.promoted()
        scores = store.version(promoted).metrics.get("accuracy", {}) if promoted is not None else {}
        for batch in self._batches - set(scores):  # a rollback serves fewer batches
            if self.multiprocess:  # a worker's file cannot drop a sample: mark it as no score
                self.held_out.labels(batch).set(float("nan"))
            else:
                self.held_out.remove(batch)
        for batch, value in scores.items():
            self.held_out.labels(batch).set(value)
        self._batches = set(scores)

    def quarantined_rows(self, store: ModelStore) -> int:
        """Rows kept under the store's quarantine (each batch read once: kept batches never change)."""
        for name in store.data_names("quarantine"):
            if name not in self._quarantine_rows:
                self._quarantine_rows[name] = _rows(store.get_data(name, "quarantine"))
        return sum(self._quarantine_rows.values())

    def render(self) -> bytes:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # its __init__ is unannotated
            return generate_latest(registry)
        return generate_latest(self.registry)


def pending_rows(store: ModelStore) -> int | None:
    """Rows of the batches waiting for a promoted version (pending or held for review); None for a
    store that keeps no such record."""
    pending = getattr(store, "pending", None)
    return None if pending is None else sum(p.rows for p in pending())


def _rows(tensors: dict[str, Any]) -> int:
    """The rows of a kept batch: a classifier's labels, a translation store's texts, or else the
    first tensor's rows."""
    for key in ("y", "source_len"):
        if key in tensors:
            return len(tensors[key])
    return len(next(iter(tensors.values()), ()))


def _first_in(folder: Path) -> bool:
    """True for the one process that marks ``folder`` first (an atomic create)."""
    try:
        os.close(os.open(folder / "retain-restored", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
