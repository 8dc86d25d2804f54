"""The service's Prometheus metrics (prometheus-client), one registry per service.

With several worker processes (``retain serve --workers N``) prometheus-client's multiprocess mode
sums the workers' files in ``PROMETHEUS_MULTIPROC_DIR``; gauges then report the latest value.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """Every metric ``GET /metrics`` shows."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        kw = {"registry": None if self.multiprocess else self.registry}
        gauge = {"multiprocess_mode": "mostrecent"} if self.multiprocess else {}
        self.requests = Counter("retain_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                **kw)
        self.latency = Histogram("retain_request_seconds", "request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, **kw)
        self.predictions = Counter("retain_predictions", "predictions made, by predicted class", ["label"], **kw)
        self.feedback = Counter("retain_feedback_rows", "labelled rows acknowledged (durably stored)", **kw)
        self.queue = Gauge("retain_queue_depth", "feedback rows waiting for an update", **kw, **gauge)
        self.updates = Counter("retain_updates", "updates run, by outcome (promoted, kept, refused)",
                               ["outcome"], **kw)
        self.gate = Counter("retain_gate_decisions", "data-quality gate decisions on feedback batches",
                            ["decision"], **kw)
        self.version = Gauge("retain_serving_version", "the model version answering predictions", **kw, **gauge)
        self.labelled = Counter("retain_prequential_labelled", "predictions later labelled by feedback", **kw)
        self.correct = Counter("retain_prequential_correct", "of those, predictions that were right", **kw)
        self.accuracy = Gauge("retain_prequential_accuracy", "share of labelled predictions that were right",
                              **kw, **gauge)
        self.drift = Counter("retain_drift_alarms", "drift alarms on the prequential error", **kw)

    def render(self) -> bytes:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
