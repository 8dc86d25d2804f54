"""The served model: the promoted version loaded, swapped in whole when it changes, and its predictions.

Predictions read :attr:`Served.current`, a (version, learner, label names) triple replaced whole
when the store's promoted version changes (a reference swap: a request in flight keeps the triple
it took). A classifier answers with its top labels; a kind that writes its answers with them (a translation
of each text into the language its input names, a clip's transcript; one generation at a time: a
generative model switches its mode while it decodes). Until a warm-up prediction has run on the loaded version (a
frozen backbone's encoder built, one dummy input answered) the service is not ready: the first
request after ``/ready`` pays no loading.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from fastapi import HTTPException
from sqlalchemy.exc import IntegrityError

from retain.build import backbone_encoder, model_inputs
from retain.config import ServiceConfig
from retain.data.features import encode
from retain.data.files import InputError
from retain.engine import Learner
from retain.loop import Project, top_labels
from retain.service.inputs import read_inputs
from retain.service.metrics import ServiceMetrics
from retain.service.schemas import PredictRequest, problem
from retain.store import StoreError

if TYPE_CHECKING:
    from retain.engine.detection import DetectionLearner
    from retain.engine.generative import GenerativeLearner

log = logging.getLogger("retain.service")

class Loaded(NamedTuple):
    """One version as served: its learner (only ever predicting) and the name of each class id."""

    version: int
    learner: Learner | GenerativeLearner[Any] | DetectionLearner
    names: list[str]

    @property
    def classifier(self) -> Learner:
        """The learner of a store whose model picks labels (a classifier's)."""
        assert isinstance(self.learner, Learner), "a store whose model writes its answers has no classifier"
        return self.learner


class Served:
    """The promoted version of ``project``'s store, kept loaded (see the module docstring)."""

    def __init__(self, project: Project, metrics: ServiceMetrics, settings: ServiceConfig | None = None) -> None:
        self.project, self.store, self.metrics = project, project.store, metrics
        self.settings = settings or project.config.service
        self.labels = not project.kind.writes_answers  # a classifier's labels, or a translation
        self.described = self.store.meta("inputs")
        if self.described is None and self.labels:
            raise StoreError(f"{self.store.path} does not record what its inputs look like; make it with retain init")
        self.generating = threading.Lock()
        self.loading = threading.Lock()  # one load at a time: the watcher and an update may both see a new version
        self.current: Loaded | None = None
        self.shadow: Loaded | None = None  # a kept candidate answering beside it, judged on labelled rows
        self.recent: dict[str, Any] | None = None  # a detector's latest answer and its image, for the dashboard
        self.warmed = 0  # warm-up predictions run: ready once one has
        self.warm_error: str | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.refresh()

    def refresh(self) -> None:
        """Load the promoted version if it is not the one served; then swap it in whole."""
        with self.loading:
            version = self.store.promoted()
            if version is None or (self.current is not None and self.current.version == version):
                self._shadow()  # a candidate kept since, or promoted
                return
            learner = self.store.load(version, device="cpu")
            learner.model.eval()  # only ever predicts: threads share it without switching its mode
            before = self.current
            self.current = Loaded(version, learner, self.project.label_names(learner))
            self.metrics.version.set(version)
            self._shadow()
        if before is not None:
            log.info("serving version %d (was %d)", version, before.version)

    def _shadow(self) -> None:
        """Load the candidate to serve in shadow (``service.shadow``: the newest kept version made from
        the promoted one), or drop the one served when there is none."""
        version = self.project.shadow() if self.settings.shadow else None
        if version == (self.shadow.version if self.shadow else None):
            return
        if version is None:
            self.shadow = None
            return
        learner = self.store.load(version, device="cpu")
        learner.model.eval()
        self.shadow = Loaded(version, learner, self.project.label_names(learner))
        log.info("version %d answers in shadow beside version %s", version,
                 self.current.version if self.current else "none")

    @property
    def ready(self) -> bool:
        """A version is loaded and a warm-up prediction has run."""
        return self.current is not None and self.warmed > 0

    def warm(self) -> None:
        """Load what a first prediction would (a frozen backbone's encoder, the tokenizer) and answer one
        dummy input with the served version, so that the first request after ``/ready`` pays no loading."""
        served = self.current
        if served is None:
            return
        start = time.perf_counter()
        if not self.labels:
            with self.generating:
                self.project.kind.predict(served.learner, self.project.kind.warm_rows(), 1)
        else:
            modality, shape = self.described["modality"], self.described["shape"]
            x = (self.read([{"text": "warm-up"}], "warm-up") if modality == "text"
                 else torch.zeros((1, *shape), dtype=torch.float32))
            cfg = self.project.config
            if cfg.model.backbone is not None and cfg.model.adaptation == "frozen":
                # the encoder itself, not the feature cache: a cached dummy would leave it unloaded
                x = encode(backbone_encoder(cfg).get(), x, progress=False)
            served.classifier.predict_proba(x)
        self.warmed += 1
        log.info("ready: version %d answered a warm-up input in %.2f s", served.version, time.perf_counter() - start)

    def start(self, poll: float) -> None:
        """Warm up, then check for a newly promoted version every ``poll`` seconds, in a background thread."""
        self.thread = threading.Thread(target=self._watch, args=(poll,), name="retain-watch", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def _watch(self, poll: float) -> None:
        while True:
            if not self.warmed and self.warm_error is None:
                try:
                    self.warm()
                except Exception as err:  # noqa: BLE001 - logged and shown by /ready; predictions will say more
                    self.warm_error = f"{type(err).__name__}: {err}"
                    log.exception("the warm-up prediction failed; /ready stays 503")
            if self.stop.wait(poll):
                return
            with contextlib.suppress(Exception):  # a store busy for a moment: try again next time
                self.refresh()

    def read(self, inputs: list[dict[str, Any]], where: str) -> Any:
        """Raw input rows as the store's model was trained on, or the rows of a kind that writes its
        answers (a translation store's texts and languages, a transcription store's clips;
        :class:`InputError` naming ``where``)."""
        if not self.labels:
            return self.project.kind.request_rows(inputs, where)
        return read_inputs(inputs, self.described, self.project.config.scenario.files, where)

    def predict(self, request: PredictRequest) -> dict[str, Any]:
        """The served version's answer to each input (top labels, or a translation); those given an
        id are kept for feedback."""
        served = self.current
        if served is None:
            raise HTTPException(503, detail="no version is promoted yet")
        version, learner, names = served
        try:
            x = self.read([i.data() for i in request.inputs], "inputs")
        except InputError as err:
            raise problem(422, ["body", *(int(p) if p.isdigit() else p for p in err.field.split("."))],
                          err.message) from None
        if self.labels:
            x = self._model_inputs(x)
        out, answers = (self._labels(served.classifier, names, x, request) if self.labels
                        else self._answers(learner, version, x, request))
        kept: list[dict[str, Any]] = [
            {"id": item.id, "version": version, "inputs": json.dumps(item.data()), "label": answer}
            for item, answer in zip(request.inputs, answers, strict=True) if item.id is not None]
        if kept:
            ids = [k["id"] for k in kept]
            try:
                if len(set(ids)) < len(ids):
                    raise IntegrityError("", None, ValueError("repeated"))
                self.store.intake.add_predictions(kept)
            except IntegrityError:  # an id given before, or twice: say which
                used = sorted(set(self.store.intake.predictions(ids)) | {i for i in ids if ids.count(i) > 1})
                raise problem(409, ["body", "inputs", "id"], f"ids already used: {', '.join(used[:5])}") from None
            self._in_shadow(x, request)
        return {"version": version, "predictions": out}

    def _in_shadow(self, x: Any, request: PredictRequest) -> None:
        """What the candidate in shadow answers to the inputs given an id, kept to judge it when
        feedback labels them; never returned, and never failing the request."""
        shadow = self.shadow
        if shadow is None:
            return
        index = [i for i, item in enumerate(request.inputs) if item.id is not None]
        try:
            if self.labels:
                answers = [top[0][0] for top in top_labels(shadow.classifier.predict_proba(x[index]), shadow.names, 1)]
            else:
                with self.generating:
                    answers = [p.label for p in self.project.kind.predict(shadow.learner, x.take(torch.tensor(index)),
                                                                           1)]
            self.store.intake.add_shadow([{"id": request.inputs[i].id, "version": shadow.version, "label": a}
                                          for i, a in zip(index, answers, strict=True)])
        except Exception:  # noqa: BLE001 - the answer served is what counts; the shadow's loss is logged
            log.exception("version %d in shadow could not answer", shadow.version)

    def _labels(self, learner: Learner, names: list[str], x: torch.Tensor, request: PredictRequest
                ) -> tuple[list[dict[str, Any]], list[str]]:
        """What the classifier answers to each input, and each one's label."""
        tops = top_labels(learner.predict_proba(x), names, request.top_k)
        out: list[dict[str, Any]] = []
        for item, top in zip(request.inputs, tops, strict=True):
            self.metrics.predictions.labels(top[0][0]).inc()
            out.append({"id": item.id, "label": top[0][0],
                        "top": [{"label": n, "probability": v} for n, v in top]})
        return out, [o["label"] for o in out]

    def _model_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the model reads of request rows ``x``; the feature cache only with ``service.cache_features``
        (outside traffic would otherwise fill the user's cache and evict what training keeps there)."""
        cfg = self.project.config
        if not self.settings.cache_features:
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"feature_cache": None})})
        return model_inputs(cfg, x)

    def _answers(self, learner: Any, version: int, rows: Any, request: PredictRequest
                 ) -> tuple[list[dict[str, Any]], list[str]]:
        """What a kind that writes its answers says to each row (a translation, a transcript, boxes), and each
        answer as the store keeps it. A detector's latest answer is kept, with its image, for the dashboard."""
        kind = self.project.kind
        with self.generating:
            answers = kind.predict(learner, rows, 1)
        out = []
        for i, (item, group, answer) in enumerate(zip(request.inputs, kind.answer_groups(rows), answers, strict=True)):
            self.metrics.predictions.labels(group).inc()
            out.append({"id": item.id} | kind.shown(answer.label) | kind.answer_fields(rows, i))
        if out and "boxes" in out[-1] and request.inputs[-1].image is not None:
            self.recent = {"version": version, "at": time.time(), "image": request.inputs[-1].image,
                           "boxes": out[-1]["boxes"]}
        return out, [a.label for a in answers]
