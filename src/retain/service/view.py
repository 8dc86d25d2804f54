"""What the dashboard and ``GET /state`` show, computed from the store's and the project's public records."""

from __future__ import annotations

from collections import deque
from typing import Any

from retain.loop import Project
from retain.service.metrics import pending_rows
from retain.service.served import Served
from retain.service.updater import Updater


class View:
    """The service at a glance: versions, promotions and drift alarms, prequential accuracy over time,
    the feedback's fate, held-out accuracy per class, the last update and prediction latency."""

    def __init__(self, project: Project, served: Served, updater: Updater) -> None:
        self.project, self.store, self.served, self.updater = project, project.store, served, updater
        self.latencies: deque[float] = deque(maxlen=2000)  # seconds of the latest predict requests
        self._per_class: dict[tuple[int, tuple[str, ...]], dict[str, float]] = {}

    def state(self, span: float | None = None) -> dict[str, Any]:
        """Everything the dashboard draws; the accuracy series over the labelled predictions of the
        last ``span`` seconds of feedback (default: all), each point the moving accuracy of the rows up
        to it, so a recent span keeps its detail however long the store has run."""
        versions = self.project.versions()
        events = [{"at": at, "version": v, "kind": kind, "detail": detail}
                  for at, v, kind, detail in self.store.events() if kind in ("promote", "drift")]
        labelled = self.store.intake.prequential(self.project.kind.answer_score)
        since = labelled[-1][0] - span if labelled and span else None
        first = next(i for i, (at, _, _) in enumerate(labelled) if at >= since) if since is not None else 0
        shown = len(labelled) - first
        step = max(1, shown // 200)
        window = max(20, step)
        series = []
        for end in range(max(first + 1, min(window, len(labelled))), len(labelled) + 1, step) if shown else ():
            part = labelled[max(0, end - window):end]
            series.append({"at": part[-1][0], "version": part[-1][1],
                           "accuracy": sum(hit for _, _, hit in part) / len(part)})
        served = self.served.current.version if self.served.current else None
        lat = sorted(self.latencies)
        feedback = self.store.intake.feedback_counts()
        return {"served": served, "metric": self.project.kind.metric, "answers": self.project.kind.labels,
                "versions": versions, "events": events, "prequential": series, "window": window,
                "labelled": len(labelled), "correct": sum(hit for _, _, hit in labelled),
                "queue": feedback.get("queued", 0), "feedback": feedback, "pending_rows": pending_rows(self.store),
                "quarantined_rows": self.updater.metrics.quarantined_rows(self.store),
                "per_class": self.per_class(served), "last_update": self.updater.last_update,
                "shadow": self.updater.shadow_state, "recent": self.served.recent,
                "waiting": [{"name": p.name, "status": p.status, "rows": p.rows, "version": p.version,
                             "source": p.source} for p in self.store.pending(("pending", "held", "dropped"))],
                "quarantine": [{"name": n, "rows": self.store.data_rows(n, "quarantine")}
                               for n in self.store.data_names("quarantine")],
                "latency_ms": {"p50": 1000 * lat[len(lat) // 2] if lat else None,
                               "p99": 1000 * lat[int(0.99 * (len(lat) - 1))] if lat else None}}

    def per_class(self, version: int | None) -> dict[str, float]:
        """The held-out score per class (per direction) of ``version`` over every batch any version
        learned: the figures of ``retain diff`` (computed once per version and set of batches)."""
        if version is None:
            return {}
        every = [v.id for v in self.store.versions()]
        key = (version, tuple(self.store.held_out_names(every)))
        if key not in self._per_class:
            current = self.served.current
            learner = current.learner if current and current.version == version else self.store.load(version, "cpu")
            with self.served.generating:  # a generative model's adapters are routed while it decodes
                self._per_class[key] = self.project.per_answer(learner, self.project.held_out(every))
        return self._per_class[key]
