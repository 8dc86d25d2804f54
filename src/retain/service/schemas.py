"""What the service's requests look like, and the one shape of every error that names a field."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from retain.service.inputs import Input

VERSION_MAX = 2**31 - 1  # version ids are database integers


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Input] = Field(min_length=1, description="what to predict; give an input an id to send feedback")
    top_k: int = Field(1, ge=1, le=100, description="labels per input with their probabilities")


class FeedbackRow(BaseModel):
    """A true label, for an input or for an earlier prediction's id."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=200, description="the true label; on a translation store, the "
                       "corrected translation (a post-edit)")
    id: str | None = Field(None, min_length=1, max_length=200, description="the id given to a prediction")
    input: Input | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[FeedbackRow] = Field(min_length=1)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=1, le=VERSION_MAX, description="default: the promoted version's parent")


def problem(status: int, field: list[Any], message: str) -> HTTPException:
    """An error naming the field, shaped as FastAPI's own validation errors."""
    return HTTPException(status, detail=[{"loc": field, "msg": message, "type": "value_error"}])


async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors in that shape: only the location, message and type of each."""
    fields = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in err.errors()]
    return JSONResponse({"detail": fields}, 422)
