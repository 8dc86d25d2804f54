"""The factory of ``retain serve``'s FastAPI app: it opens the store and wires the service's parts together.

A model store behind an HTTP API that predicts, takes labelled feedback, and updates, checks and
promotes models by itself, with Prometheus metrics and a live dashboard. One :class:`Service` per
process: the served model (:mod:`~retain.service.served`), the feedback queue and its updater
(:mod:`~retain.service.updater`), what the dashboard shows (:mod:`~retain.service.view`), behind
the endpoints of :mod:`~retain.service.routes`. It logs to the ``retain.service`` logger (start-up,
updates, lease waits, model swaps; each request on ``retain.service.access``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from retain.config import ServiceConfig
from retain.loop import Project
from retain.service.deps import Measured, Service, token_of
from retain.service.metrics import ServiceMetrics
from retain.service.routes import router
from retain.service.schemas import invalid
from retain.service.served import Served
from retain.service.updater import Updater
from retain.service.view import View

log = logging.getLogger("retain.service")

def open_service(store: str | Path, settings: ServiceConfig | None = None, token: str | None = None) -> Service:
    """The parts serving ``store``, with its promoted version loaded; ``settings`` default to the
    store's config, ``token`` to the one ``settings`` name."""
    project = Project(store)
    settings = settings or project.config.service
    token = token if token is not None else token_of(settings)
    metrics = ServiceMetrics()
    served = Served(project, metrics, settings)
    updater = Updater(project, served, settings, metrics)
    # a restart goes on from the recorded figures, not from zero
    labelled = project.store.intake.prequential(project.kind.answer_score)
    metrics.restore(labelled)
    updater.labelled, updater.correct = len(labelled), sum(hit for *_, hit in labelled)
    return Service(project, settings, token, metrics, served, updater, View(project, served, updater))


def create_app(store: str | Path, settings: ServiceConfig | None = None, token: str | None = None,
               updater: bool = True, address: str | None = None) -> FastAPI:
    """The FastAPI app serving ``store`` (see the module docstring); ``updater``: this process may
    run the background updater (when it holds the store's lease); ``address``: where it listens,
    for the start-up line."""
    service = open_service(store, settings, token)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        current = service.served.current
        log.info("serving %s (%s store, version %s promoted) at %s (the dashboard at /); updater %s",
                 service.store.where, service.project.kind.name, current.version if current else "none",
                 address or "an ASGI client", "on" if updater else "off (--no-updater)")
        service.served.start(service.settings.poll)
        if updater:
            service.updater.start()
        gc.collect()
        gc.freeze()  # what is loaded now stays: collections then walk only what requests make, and stay short
        yield
        service.served.close()
        service.updater.close()

    app = FastAPI(title="retain", summary="a model that keeps learning: predict, feedback, update, promote",
                  lifespan=lifespan)
    app.state.service = service
    app.add_middleware(Measured, metrics=service.metrics, latencies=service.view.latencies,
                       limit=service.settings.max_request_bytes)
    app.exception_handler(RequestValidationError)(invalid)  # typed for its class, unlike add_exception_handler
    app.include_router(router)
    return app


def app_from_environment() -> FastAPI:
    """The app for ``uvicorn --factory`` worker processes (``retain serve --workers N``): the store
    and settings come from ``RETAIN_SERVE_STORE`` and ``RETAIN_SERVE_SETTINGS`` (JSON), the log
    settings from ``RETAIN_SERVE_LOG`` (level, access log) and the address from ``RETAIN_SERVE_ADDRESS``."""
    raw = os.environ.get("RETAIN_SERVE_SETTINGS")
    settings = ServiceConfig.model_validate(json.loads(raw)) if raw else None
    level, _, accesses = os.environ.get("RETAIN_SERVE_LOG", "info").partition(",")
    configure_logging(level, accesses == "access")
    return create_app(os.environ["RETAIN_SERVE_STORE"], settings, address=os.environ.get("RETAIN_SERVE_ADDRESS"))


def configure_logging(level: str = "info", access_log: bool = False) -> None:
    """The service's log lines on stderr from ``level`` up (debug, info, warning, error, critical);
    ``access_log``: a line for each request too (method, path, status, milliseconds)."""
    logger = logging.getLogger("retain.service")
    if not any(h.get_name() == "retain serve" for h in logger.handlers):  # once per process
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
        handler.set_name("retain serve")
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logging.getLogger("retain.service.access").setLevel(logging.INFO if access_log else logging.WARNING)
