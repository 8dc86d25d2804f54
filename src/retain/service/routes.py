"""The HTTP endpoints: each reads its request, calls the part of the service that does the work, answers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi import Path as FastAPIPath
from fastapi.responses import HTMLResponse, JSONResponse, Response

from retain.service.deps import Service, limited, reader, service_of, writer
from retain.service.schemas import VERSION_MAX, FeedbackRequest, PredictRequest, RollbackRequest, problem
from retain.store import StoreError

STATIC = Path(__file__).parent / "static"

router = APIRouter()
ServiceDep = Annotated[Service, Depends(service_of)]


# The two busy endpoints answer plain JSON: no response model to validate on the way out.
@router.post("/predict", dependencies=[Depends(reader)], response_model=None)
def predict(request: PredictRequest, service: ServiceDep) -> JSONResponse:
    """Labels and top-k probabilities for one or many inputs, and the version that answered."""
    limited(service.settings, len(request.inputs), "inputs")
    return JSONResponse(service.served.predict(request))


@router.post("/feedback", dependencies=[Depends(writer)], response_model=None)
def feedback(request: FeedbackRequest, service: ServiceDep) -> JSONResponse:
    """True labels for inputs or earlier predictions; acknowledged once durably stored."""
    limited(service.settings, len(request.rows), "rows")
    return JSONResponse(service.updater.feedback(request))


@router.post("/update", dependencies=[Depends(writer)])
def update(service: ServiceDep) -> dict[str, Any]:
    """Learn the queued feedback now: the gate, a candidate, the promotion rule."""
    return service.updater.update("asked")


@router.get("/versions", dependencies=[Depends(reader)])
def versions(service: ServiceDep) -> list[dict[str, Any]]:
    return service.project.versions()


@router.post("/promote/{version}", dependencies=[Depends(writer)])
def promote(version: Annotated[int, FastAPIPath(ge=1, le=VERSION_MAX)], service: ServiceDep) -> dict[str, Any]:
    try:
        with service.store.writer():
            service.store.promote(version, reason="promoted by hand")
    except StoreError as err:
        raise problem(404, ["path", "version"], str(err)) from None
    service.served.refresh()
    return {"promoted": version}


@router.post("/rollback", dependencies=[Depends(writer)])
def rollback(service: ServiceDep, request: Annotated[RollbackRequest | None, Body()] = None) -> dict[str, Any]:
    try:
        version = service.project.rollback(request.version if request else None)
    except StoreError as err:
        raise problem(409, ["body", "version"], str(err)) from None
    service.served.refresh()
    return {"promoted": version}


@router.get("/quarantine", dependencies=[Depends(reader)])
def quarantine(service: ServiceDep) -> list[dict[str, Any]]:
    """The rows the gate set aside, by batch, each as it came (source, row or file, label, why)."""
    return service.project.quarantined()


@router.post("/quarantine/{name}/{action}", dependencies=[Depends(writer)])
def review(name: Annotated[str, FastAPIPath(max_length=200, pattern=r"^[\w.-]+$")],
           action: Annotated[str, FastAPIPath(pattern="^(release|drop)$")], service: ServiceDep) -> dict[str, Any]:
    """Release quarantined rows (the next update learns them) or drop them (with a record)."""
    try:
        if action == "release":
            return {"released": name, "waiting_as": service.project.release(name)}
        service.project.drop(name)
        return {"dropped": name}
    except StoreError as err:
        raise problem(404, ["path", "name"], str(err)) from None


@router.get("/health")
def health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "alive"}


@router.get("/ready")
def ready(service: ServiceDep) -> JSONResponse:
    """A promoted version is loaded and has answered a warm-up input: predictions pay no loading."""
    served = service.served
    if served.current is None:
        return JSONResponse({"status": "no version is promoted yet"}, 503)
    if not served.ready:
        status = f"the warm-up failed: {served.warm_error}" if served.warm_error else "warming up"
        return JSONResponse({"status": status, "version": served.current.version}, 503)
    return JSONResponse({"status": "ready", "version": served.current.version})


@router.get("/metrics", dependencies=[Depends(reader)])
def metrics(service: ServiceDep) -> Response:
    """Prometheus text format."""
    service.metrics.read_store(service.store, service.project.kind.answer_score)
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/state", dependencies=[Depends(reader)])
def state(service: ServiceDep, span: Annotated[float | None, Query(
        gt=0, description="the accuracy series over the last this many seconds of feedback; default: all")] = None
          ) -> dict[str, Any]:
    """What the dashboard shows, as JSON."""
    return service.view.state(span)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    return HTMLResponse((STATIC / "dashboard.html").read_text())


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    files = {p.name: p for p in STATIC.iterdir()}
    if name not in files:
        raise HTTPException(404, detail=f"no file {name}")
    kind = {".js": "text/javascript", ".css": "text/css"}.get(files[name].suffix, "text/plain")
    return Response(files[name].read_bytes(), media_type=kind)
