"""What the service's requests look like, and the one shape of every error that names a field."""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from retain.service.inputs import Input

VERSION_MAX = 2**31 - 1  # version ids are database integers


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Input] = Field(min_length=1, description="what to predict; give an input an id to send feedback")
    top_k: int = Field(1, ge=1, le=100, description="labels per input with their probabilities")


class FeedbackBox(BaseModel):
    """One object in an image: its class and where it is."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=200, description="the object's class")
    box: list[float] = Field(min_length=4, max_length=4, description="[x, y, width, height] in the image's pixels")


class FeedbackRow(BaseModel):
    """A true label (or a detection store's true boxes), for an input or for an earlier prediction's id."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, min_length=1, max_length=200, description="the true label; on a "
                              "translation store, the corrected translation (a post-edit); on a transcription store, "
                              "the transcript")
    boxes: list[FeedbackBox] | None = Field(None, max_length=500, description="a detection store's: every object in "
                                            "the image (an empty list: none)")
    id: str | None = Field(None, min_length=1, max_length=200, description="the id given to a prediction")
    input: Input | None = None

    @model_validator(mode="after")
    def _one_answer(self) -> FeedbackRow:
        if (self.label is None) == (self.boxes is None):
            raise ValueError("give either label or boxes (a detection store's)")
        return self

    def answer(self) -> str:
        """The answer as the store keeps it: the label, or the boxes as JSON."""
        if self.boxes is None:
            assert self.label is not None  # _one_answer: a row has a label or boxes
            return self.label
        return json.dumps([b.model_dump() for b in self.boxes])


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
