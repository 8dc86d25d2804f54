"""What every request depends on: the process's handles, the bearer-token check, and the size limits."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retain.config import ServiceConfig
from retain.loop import Project
from retain.service.metrics import ServiceMetrics
from retain.service.schemas import problem
from retain.service.served import Served
from retain.service.updater import Updater
from retain.service.view import View
from retain.store import ModelStore

access = logging.getLogger("retain.service.access")  # on with retain serve --access-log

@dataclass
class Service:
    """The state of one serving process: its project and store, settings, metrics, the served model,
    the updater and the dashboard's view (``app.state.service``)."""

    project: Project
    settings: ServiceConfig
    token: str | None  # None: writes are refused
    metrics: ServiceMetrics
    served: Served
    updater: Updater
    view: View

    @property
    def store(self) -> ModelStore:
        return self.project.store


def token_of(settings: ServiceConfig) -> str | None:
    """The bearer token for writes: from ``service.token_file``, else the ``token_env`` variable."""
    if settings.token_file:
        return Path(settings.token_file).read_text().strip() or None
    return os.environ.get(settings.token_env) or None


async def service_of(request: Request) -> Service:  # async, as every dependency here: no thread hop
    """This process's :class:`Service`."""
    service: Service = request.app.state.service
    return service


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


async def writer(request: Request, service: Annotated[Service, Depends(service_of)]) -> None:
    """Writes need the configured token."""
    if service.token is None:
        raise HTTPException(403, detail=f"writes are disabled: no token is configured (set {service.settings.token_env}"
                                        " or service.token_file)")
    given = _bearer(request)
    if given is None:
        raise HTTPException(401, detail="this endpoint needs a bearer token (Authorization: Bearer TOKEN)",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.encode(), service.token.encode()):
        raise HTTPException(403, detail="wrong token")


async def reader(request: Request, service: Annotated[Service, Depends(service_of)]) -> None:
    """Reads are open, unless ``service.open_reads`` is off: then they need the token too."""
    if not service.settings.open_reads:
        await writer(request, service)


def limited(settings: ServiceConfig, n: int, field: str) -> None:
    """Refuse a request carrying more than ``service.max_inputs`` items in ``field``."""
    if n > settings.max_inputs:
        raise problem(422, ["body", field], f"{n} items; at most {settings.max_inputs} a request "
                                            "(service.max_inputs)")


class Measured:
    """ASGI middleware: refuses bodies over ``limit`` bytes (413) or of unstated length (411) before
    they are read, and counts every request and its latency by endpoint (and keeps the latencies of
    predictions in ``latencies``, for the dashboard); with the access log on, a line for each request."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, latencies: deque[float], limit: int) -> None:
        self.app, self.metrics, self.latencies, self.limit = app, metrics, latencies, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            access.info("%s %s %d (%s)", scope["method"], scope["path"], refused[0], refused[1])
            return await JSONResponse({"detail": refused[1]}, refused[0])(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - start
            endpoint = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            if endpoint == "/predict":
                self.latencies.append(seconds)
            if access.isEnabledFor(logging.INFO):
                access.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, 1000 * seconds)
