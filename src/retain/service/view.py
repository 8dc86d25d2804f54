"""What the dashboard and ``GET /state`` show, computed from the store's and the project's public records."""

from __future__ import annotations

from collections import deque
from typing import Any

from retain.loop import Project
from retain.service.served import Served
from retain.service.updater import Updater


class View:
    """The service at a glance: versions, promotions and drift alarms, prequential accuracy over time,
    the feedback's fate, held-out accuracy per class, the last update and prediction latency."""

    def __init__(self, project: Project, served: Served, updater: Updater) -> None:
        self.project, self.store, self.served, self.updater = project, project.store, served, updater
        self.latencies: deque[float] = deque(maxlen=2000)  # seconds of the latest predict requests
        self._per_class: dict[int, dict[str, float]] = {}

    def state(self) -> dict[str, Any]:
        versions = self.project.versions()
        events = [{"at": at, "version": v, "kind": kind, "detail": detail}
                  for at, v, kind, detail in self.store.events() if kind in ("promote", "drift")]
        labelled = self.store.intake.prequential()
        step = max(1, len(labelled) // 200)
        window = max(20, step)
        series = []
        for end in range(min(window, len(labelled)), len(labelled) + 1, step) if labelled else ():
            part = labelled[max(0, end - window):end]
            series.append({"at": part[-1][0], "version": part[-1][1],
                           "accuracy": sum(hit for _, _, hit in part) / len(part)})
        served = self.served.current.version if self.served.current else None
        lat = sorted(self.latencies)
        feedback = self.store.intake.feedback_counts()
        return {"served": served, "metric": self.project.kind.metric, "answers": self.project.kind.labels,
                "versions": versions, "events": events, "prequential": series,
                "labelled": len(labelled), "correct": sum(hit for _, _, hit in labelled),
                "queue": feedback.get("queued", 0), "feedback": feedback,
                "per_class": self.per_class(served), "last_update": self.updater.last_update,
                "latency_ms": {"p50": 1000 * lat[len(lat) // 2] if lat else None,
                               "p99": 1000 * lat[int(0.99 * (len(lat) - 1))] if lat else None}}

    def per_class(self, version: int | None) -> dict[str, float]:
        """The held-out score per class (per direction) of ``version`` (computed once per version)."""
        if version is None:
            return {}
        if version not in self._per_class:
            current = self.served.current
            learner = current.learner if current and current.version == version else self.store.load(version, "cpu")
            with self.served.generating:  # a generative model's adapters are routed while it decodes
                self._per_class[version] = self.project.per_answer(learner, self.project.held_out())
        return self._per_class[version]
