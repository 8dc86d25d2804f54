"""``retain serve``: a model store behind an HTTP API that predicts, takes labelled feedback, and
updates, checks and promotes models by itself, with Prometheus metrics and a live dashboard.

One :class:`Service` per process. Predictions read ``served``, a (version, learner) pair replaced
whole when the store's promoted version changes (a reference swap: a request in flight keeps the
pair it took). Feedback is acknowledged once committed to the store's database. The updater runs
in a background thread of the process holding the store's ``updater`` lease (one writer across
processes and hosts); it takes the queued feedback through the gate and the promotion rule with
:meth:`Project.learn`, as ``retain update`` does with a file.
"""

from __future__ import annotations

import contextlib
import gc
import hmac
import json
import os
import socket
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi import Path as FastAPIPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from retain.build import model_inputs
from retain.config import ServiceConfig
from retain.engine import Learner
from retain.engine.updater import Hybrid
from retain.loop import Project, top_labels
from retain.service.inputs import Input, InputError, read_inputs
from retain.service.metrics import ServiceMetrics
from retain.store import StoreError

LEASE = "updater"
VERSION_MAX = 2**31 - 1  # version ids are database integers
STATIC = Path(__file__).parent / "static"


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Input] = Field(min_length=1, description="what to predict; give an input an id to send feedback")
    top_k: int = Field(1, ge=1, le=100, description="labels per input with their probabilities")


class FeedbackRow(BaseModel):
    """A true label, for an input or for an earlier prediction's id."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=200)
    id: str | None = Field(None, min_length=1, max_length=200, description="the id given to a prediction")
    input: Input | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[FeedbackRow] = Field(min_length=1)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=1, le=VERSION_MAX, description="default: the promoted version's parent")


def _problem(status: int, field: list[Any], message: str) -> HTTPException:
    """An error naming the field, shaped as FastAPI's own validation errors."""
    return HTTPException(status, detail=[{"loc": field, "msg": message, "type": "value_error"}])


class Service:
    """The state of one serving process (see the module docstring)."""

    def __init__(self, store: str | Path, settings: ServiceConfig | None = None, token: str | None = None,
                 updater: bool = True) -> None:
        self.project = Project(store)
        self.store = self.project.store
        self.settings = settings or self.project.config.service
        self.token = token if token is not None else self._token()
        self.described = self.store.meta("inputs")
        if self.described is None:
            raise StoreError(f"{self.store.path} does not record what its inputs look like; make it with retain init")
        self.metrics = ServiceMetrics()
        self.served: tuple[int, Learner, list[str]] | None = None  # version, learner, label names
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.run_updater = updater
        self.updating = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.latencies: deque[float] = deque(maxlen=2000)
        self.last_update: dict[str, Any] | None = None
        self.tried = 0.0  # when the last update began (rows too few to learn are tried again after update_wait)
        self.drift_signal = False
        self.detector = Hybrid(drift=self.settings.drift).detector() if self.settings.drift else None
        self.labelled, self.correct = 0, 0  # predictions later labelled, and right, in this process
        self._per_class: dict[int, dict[str, float]] = {}
        self.refresh()

    def _token(self) -> str | None:
        if self.settings.token_file:
            return Path(self.settings.token_file).read_text().strip() or None
        return os.environ.get(self.settings.token_env) or None

    # -- the served model ---------------------------------------------------------------
    def refresh(self) -> None:
        """Load the promoted version if it is not the one served; then swap it in whole."""
        version = self.store.promoted()
        if version is None or (self.served is not None and self.served[0] == version):
            return
        learner = self.store.load(version, device="cpu")
        learner.model.eval()  # only ever predicts: threads share it without switching its mode
        self.served = (version, learner, self.project.label_names(learner))
        self.metrics.version.set(version)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._watch, name="retain-watch", daemon=True)]
        if self.run_updater:
            self.threads.append(threading.Thread(target=self._updater, name="retain-updater", daemon=True))
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        if self.run_updater:
            with contextlib.suppress(Exception):
                self.store.release(LEASE, self.holder)

    def _watch(self) -> None:
        while not self.stop.wait(self.settings.poll):
            with contextlib.suppress(Exception):  # a store busy for a moment: try again next time
                self.refresh()

    # -- predictions and feedback -------------------------------------------------------
    def read(self, inputs: list[dict[str, Any]], where: str) -> torch.Tensor:
        return read_inputs(inputs, self.described, self.project.config.scenario.files, where)

    def predict(self, request: PredictRequest) -> dict[str, Any]:
        served = self.served
        if served is None:
            raise HTTPException(503, detail="no version is promoted yet")
        version, learner, names = served
        try:
            x = self.read([i.data() for i in request.inputs], "inputs")
        except InputError as err:
            raise _problem(422, ["body", *(int(p) if p.isdigit() else p for p in err.field.split("."))],
                           err.message) from None
        tops = top_labels(learner.predict_proba(model_inputs(self.project.config, x)), names, request.top_k)
        out = []
        for item, top in zip(request.inputs, tops, strict=True):
            self.metrics.predictions.labels(top[0][0]).inc()
            out.append({"id": item.id, "label": top[0][0],
                        "top": [{"label": n, "probability": v} for n, v in top]})
        kept = [{"id": item.id, "version": version, "inputs": json.dumps(item.data()), "label": o["label"]}
                for item, o in zip(request.inputs, out, strict=True) if item.id is not None]
        if kept:
            ids = [k["id"] for k in kept]
            try:
                if len(set(ids)) < len(ids):
                    raise IntegrityError("", None, ValueError("repeated"))
                self.store.add_predictions(kept)
            except IntegrityError:  # an id given before, or twice: say which
                used = sorted(set(self.store.predictions(ids)) | {i for i in ids if ids.count(i) > 1})
                raise _problem(409, ["body", "inputs", "id"], f"ids already used: {', '.join(used[:5])}") from None
        return {"version": version, "predictions": out}

    def feedback(self, request: FeedbackRequest) -> dict[str, Any]:
        ids = [r.id for r in request.rows if r.id is not None]
        known = self.store.predictions(ids) if ids else {}
        labelled = self.store.labelled(ids) if ids else set()
        rows, data = [], []
        for i, row in enumerate(request.rows):
            if (row.id is None) == (row.input is None):
                raise _problem(422, ["body", "rows", i], "give either the input or the id of a prediction")
            if row.id in labelled or ids.count(row.id) > 1:  # one label a prediction: counted once
                raise _problem(409, ["body", "rows", i, "id"], f"the prediction {row.id!r} is labelled already")
            if row.input is None and row.id not in known:
                raise _problem(404, ["body", "rows", i, "id"], f"no prediction has the id {row.id!r}")
            item = row.input.data() if row.input is not None else json.loads(known[row.id]["inputs"])
            data.append(item)
            rows.append({"inputs": json.dumps(item), "label": row.label, "request_id": row.id})
        try:
            self.read(data, "rows")  # every row readable before any is kept
        except InputError as err:
            index = int(err.field.split(".")[1])
            raise _problem(422, ["body", "rows", index, "input", err.field.split(".")[-1]], err.message) from None
        stored = self.store.add_feedback(rows)  # committed: acknowledged from here on
        self.metrics.feedback.inc(len(rows))
        for row in request.rows:  # test-then-train: was the earlier prediction right?
            if row.id in known:
                self._labelled(known[row.id]["label"] == row.label)
        labels = set(self.served[2]) if self.served else set()
        return {"accepted": len(stored), "ids": stored,
                "new_classes": sorted({r.label for r in request.rows} - labels)}

    def _labelled(self, right: bool) -> None:
        self.labelled += 1
        self.correct += right
        self.metrics.labelled.inc()
        self.metrics.correct.inc(int(right))
        self.metrics.accuracy.set(self.correct / self.labelled)
        if self.detector is not None:
            self.detector.update(0.0 if right else 1.0)
            if self.detector.drift_detected:
                self.metrics.drift.inc()
                served = self.served[0] if self.served else None
                self.store.log("drift", "the error of labelled predictions rose", served)
                self.drift_signal = True

    # -- updates ------------------------------------------------------------------------
    def _updater(self) -> None:
        ttl, held_until = max(30.0, 10 * self.settings.poll), 0.0
        while not self.stop.wait(self.settings.poll):
            try:
                if time.time() > held_until - ttl / 2:  # renewed when half its time is gone
                    if not self.store.lease(LEASE, self.holder, seconds=ttl):
                        held_until = 0.0
                        continue
                    held_until = time.time() + ttl
                due = self.due()
                if due:
                    self.update(due)
            except Exception as err:  # noqa: BLE001 - logged; the next round tries again
                with contextlib.suppress(Exception):
                    self.store.log("updater", f"update failed: {type(err).__name__}: {err}")

    def due(self) -> str | None:
        """Why an update should run now, or None."""
        by_label, oldest = self.store.queue()
        queued = sum(by_label.values())
        self.metrics.queue.set(queued)
        if not queued:
            return None
        known = set(self.store.labels())
        fresh = {label: n for label, n in by_label.items() if label not in known}
        if fresh and max(fresh.values()) >= self.settings.new_class_rows:
            return f"new class {max(fresh, key=fresh.get)}"
        if time.time() - oldest >= self.settings.update_wait and time.time() - self.tried >= self.settings.update_wait:
            return f"rows waited {self.settings.update_wait:g} s"  # however few: none waits for ever
        if queued < self.settings.min_rows:
            return None
        if queued >= self.settings.update_rows:
            return f"{queued} rows queued"
        if self.drift_signal:
            return "drift"
        return None

    def update(self, trigger: str = "asked") -> dict[str, Any]:
        """Learn the queued feedback now (one update at a time in this process)."""
        with self.updating:
            self.tried = time.time()
            queued = self.store.feedback("queued", limit=50_000)
            if not queued:
                return {"version": None, "promoted": False, "reason": "no feedback is queued", "rows": 0}
            x = self.read([json.loads(r.inputs) for r in queued], "feedback")
            labels = self.project.labels()
            y = labels.ids([r.label for r in queued])
            source = f"feedback {queued[0].id}-{queued[-1].id}"
            try:
                result = self.project.learn(x, labels.names, y, source=source)
            except ValueError as err:  # too few rows to hold any out: wait for more
                self.last_update = {"version": None, "promoted": False, "reason": str(err), "rows": len(queued)}
                return self.last_update
            ids = [r.id for r in queued]
            self.store.settle_feedback(ids, "refused" if result.version is None else "learned", result.version)
            self.metrics.gate.labels(result.gate_decision or "accept").inc()
            outcome = "refused" if result.version is None else "promoted" if result.promoted else "kept"
            self.metrics.updates.labels(outcome).inc()
            self.drift_signal = False
            self.refresh()
            self.metrics.queue.set(len(self.store.feedback("queued")))
            self.last_update = result.__dict__ | {"rows": len(queued), "trigger": trigger}
            return self.last_update

    # -- the dashboard's view ------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        versions = self.project.versions()
        events = [{"at": at, "version": v, "kind": kind, "detail": detail}
                  for at, v, kind, detail in self.store.events() if kind in ("promote", "drift")]
        labelled = self.store.prequential()
        step = max(1, len(labelled) // 200)
        window = max(20, step)
        series = []
        for end in range(min(window, len(labelled)), len(labelled) + 1, step) if labelled else ():
            part = labelled[max(0, end - window):end]
            series.append({"at": part[-1][0], "version": part[-1][1],
                           "accuracy": sum(hit for _, _, hit in part) / len(part)})
        served = self.served[0] if self.served else None
        lat = sorted(self.latencies)
        feedback = self.store.feedback_counts()
        return {"served": served, "versions": versions, "events": events, "prequential": series,
                "labelled": len(labelled), "correct": sum(hit for _, _, hit in labelled),
                "queue": feedback.get("queued", 0), "feedback": feedback,
                "per_class": self.per_class(served), "last_update": self.last_update,
                "latency_ms": {"p50": 1000 * lat[len(lat) // 2] if lat else None,
                               "p99": 1000 * lat[int(0.99 * (len(lat) - 1))] if lat else None}}

    def per_class(self, version: int | None) -> dict[str, float]:
        """The held-out accuracy per class of ``version`` (computed once per version)."""
        if version is None:
            return {}
        if version not in self._per_class:
            learner = self.served[1] if self.served and self.served[0] == version else self.store.load(version, "cpu")
            self._per_class[version] = self.project._per_class(learner, self.project.held_out())
        return self._per_class[version]


class Measured:
    """ASGI middleware: refuses bodies over ``limit`` bytes (413) or of unstated length (411) before
    they are read, and counts every request and its latency by endpoint."""

    def __init__(self, app: Any, service: Service, limit: int) -> None:
        self.app, self.service, self.limit = app, service, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        refused = None
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            refused = 413, f"request body over {self.limit} bytes"
        elif length is None and b"transfer-encoding" in headers:
            refused = 411, "a request body needs a Content-Length"
        if refused:
            return await JSONResponse({"detail": refused[1]}, refused[0])(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - start
            endpoint = getattr(scope.get("route"), "path", "other")
            self.service.metrics.requests.labels(endpoint, str(status)).inc()
            self.service.metrics.latency.labels(endpoint).observe(seconds)
            if endpoint == "/predict":
                self.service.latencies.append(seconds)


def create_app(store: str | Path, settings: ServiceConfig | None = None, token: str | None = None,
               updater: bool = True) -> FastAPI:
    """The FastAPI app serving ``store`` (see the module docstring)."""
    service = Service(store, settings, token, updater)
    settings = service.settings

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        gc.collect()
        gc.freeze()  # what is loaded now stays: collections then walk only what requests make, and stay short
        yield
        service.close()

    app = FastAPI(title="retain", summary="a model that keeps learning: predict, feedback, update, promote",
                  lifespan=lifespan)
    app.state.service = service

    def authorization(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else None

    async def writer(request: Request) -> None:  # async: checked in the event loop, no thread hop
        if service.token is None:
            raise HTTPException(403, detail=f"writes are disabled: no token is configured (set {settings.token_env}"
                                            " or service.token_file)")
        given = authorization(request)
        if given is None:
            raise HTTPException(401, detail="this endpoint needs a bearer token (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), service.token.encode()):
            raise HTTPException(403, detail="wrong token")

    async def reader(request: Request) -> None:
        if not settings.open_reads:
            await writer(request)

    app.add_middleware(Measured, service=service, limit=settings.max_request_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        fields = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in err.errors()]
        return JSONResponse({"detail": fields}, 422)

    def limited(n: int, field: str) -> None:
        if n > settings.max_inputs:
            raise _problem(422, ["body", field], f"{n} items; at most {settings.max_inputs} a request "
                                                 "(service.max_inputs)")

    # The two busy endpoints answer plain JSON: no response model to validate on the way out.
    @app.post("/predict", dependencies=[Depends(reader)], response_model=None)
    def predict(request: PredictRequest) -> JSONResponse:
        """Labels and top-k probabilities for one or many inputs, and the version that answered."""
        limited(len(request.inputs), "inputs")
        return JSONResponse(service.predict(request))

    @app.post("/feedback", dependencies=[Depends(writer)], response_model=None)
    def feedback(request: FeedbackRequest) -> JSONResponse:
        """True labels for inputs or earlier predictions; acknowledged once durably stored."""
        limited(len(request.rows), "rows")
        return JSONResponse(service.feedback(request))

    @app.post("/update", dependencies=[Depends(writer)])
    def update() -> dict[str, Any]:
        """Learn the queued feedback now: the gate, a candidate, the promotion rule."""
        return service.update("asked")

    @app.get("/versions", dependencies=[Depends(reader)])
    def versions() -> list[dict[str, Any]]:
        return service.project.versions()

    @app.post("/promote/{version}", dependencies=[Depends(writer)])
    def promote(version: Annotated[int, FastAPIPath(ge=1, le=VERSION_MAX)]) -> dict[str, Any]:
        try:
            with service.store.writer():
                service.store.promote(version, reason="promoted by hand")
        except StoreError as err:
            raise _problem(404, ["path", "version"], str(err)) from None
        service.refresh()
        return {"promoted": version}

    @app.post("/rollback", dependencies=[Depends(writer)])
    def rollback(request: Annotated[RollbackRequest | None, Body()] = None) -> dict[str, Any]:
        try:
            version = service.project.rollback(request.version if request else None)
        except StoreError as err:
            raise _problem(409, ["body", "version"], str(err)) from None
        service.refresh()
        return {"promoted": version}

    @app.get("/health")
    def health() -> dict[str, str]:
        """The process is alive."""
        return {"status": "alive"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        """A promoted version is loaded and answering."""
        if service.served is None:
            return JSONResponse({"status": "no version is promoted yet"}, 503)
        return JSONResponse({"status": "ready", "version": service.served[0]})

    @app.get("/metrics", dependencies=[Depends(reader)])
    def metrics() -> Response:
        """Prometheus text format."""
        service.metrics.queue.set(service.store.feedback_counts().get("queued", 0))
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/state", dependencies=[Depends(reader)])
    def state() -> dict[str, Any]:
        """What the dashboard shows, as JSON."""
        return service.state()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse((STATIC / "dashboard.html").read_text())

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        files = {p.name: p for p in STATIC.iterdir()}
        if name not in files:
            raise HTTPException(404, detail=f"no file {name}")
        kind = {".js": "text/javascript", ".css": "text/css"}.get(files[name].suffix, "text/plain")
        return Response(files[name].read_bytes(), media_type=kind)

    return app


def app_from_environment() -> FastAPI:
    """The app for ``uvicorn --factory`` worker processes (``retain serve --workers N``): the store
    and settings come from ``RETAIN_SERVE_STORE`` and ``RETAIN_SERVE_SETTINGS`` (JSON)."""
    raw = os.environ.get("RETAIN_SERVE_SETTINGS")
    settings = ServiceConfig.model_validate(json.loads(raw)) if raw else None
    return create_app(os.environ["RETAIN_SERVE_STORE"], settings)
