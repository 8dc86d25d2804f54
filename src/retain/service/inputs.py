"""What the service reads: JSON inputs, checked and turned into the raw rows the store's model trained on.

An input is text, numeric features, or a base64 image or WAV clip. Each is bounded as the files of
:mod:`retain.data.files` are, before it is decoded: feature magnitudes, image pixels (from the
header), a clip's sample rate and the frames it keeps.

The store records what its inputs look like (``modality`` and ``shape``) when it is made, so a
request is read exactly as the files of ``retain init`` were: an image is resized to the training
images' side and channels, a clip resampled and cut as the config's ``files`` section says.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from retain.config import FilesConfig
from retain.data.files import FileError, InputError, out_of_range, read_image, read_wav, value_problem

FIELDS = {"text": "text", "tabular": "features", "vision": "image", "audio": "audio"}


class Input(BaseModel):
    """One input: exactly one of ``text``, ``features``, ``image`` (base64 PNG/JPEG) or ``audio``
    (base64 WAV); ``id`` names a prediction so that feedback can refer to it later."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, min_length=1, max_length=200, description="a request id to send feedback by")
    text: str | None = Field(None, min_length=1, max_length=100_000)
    features: list[float] | None = Field(None, min_length=1, max_length=1_000_000)
    image: str | None = Field(None, min_length=1, description="base64 of a PNG or JPEG file")
    audio: str | None = Field(None, min_length=1, description="base64 of a WAV file")
    lang: str | None = Field(None, min_length=1, max_length=20, description="a translation store's input: the "
                             "language to translate the text into (de, fr, ...)")

    @model_validator(mode="after")
    def _one_kind(self) -> Input:
        given = [k for k in ("text", "features", "image", "audio") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of text, features, image, audio (got {', '.join(given) or 'none'})")
        if self.lang is not None and self.text is None:
            raise ValueError("lang goes with text: the language a translation store translates the text into")
        return self

    def kind(self) -> str:
        return next(k for k in ("text", "features", "image", "audio") if getattr(self, k) is not None)

    def data(self) -> dict[str, Any]:
        """The input alone (no id), as kept with feedback."""
        return {self.kind(): getattr(self, self.kind())} | ({"lang": self.lang} if self.lang is not None else {})


def read_inputs(inputs: list[dict[str, Any]], described: dict[str, Any], files: FilesConfig,
                where: str = "inputs") -> Tensor:
    """Raw model rows for ``inputs`` (each ``{kind: value}``), read as the store's ``described``
    inputs (``modality``, ``shape``) were; an :class:`InputError` names the first bad one."""
    modality, shape = described["modality"], tuple(described["shape"])
    expected = FIELDS[modality]
    for i, item in enumerate(inputs):
        kind = next(iter(item))
        if kind != expected:
            raise InputError(f"{where}.{i}.{kind}", f"this model reads {modality} inputs: send '{expected}'")
    values = [item[expected] for item in inputs]
    if modality == "text":
        from retain.data.tokens import tokenize

        return tokenize(values)
    if modality == "tabular":
        for i, row in enumerate(values):
            if (len(row),) != shape:
                raise InputError(f"{where}.{i}.features", f"{len(row)} values, the model reads {shape[0]}")
            bad = out_of_range(np.asarray([row], dtype=np.float64))
            if bad:
                raise InputError(f"{where}.{i}.features", f"value {bad[1]}: {value_problem(row[bad[1]])}")
        return torch.tensor(values, dtype=torch.float32)
    rows = []
    for i, value in enumerate(values):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{where}.{i}.{expected}", "not base64") from None
        try:
            if modality == "vision":
                rows.append(read_image(raw, size=shape[-1], channels=shape[0]))
            else:
                rows.append(read_wav(raw, files.sample_rate, files.seconds))
        except FileError as err:
            raise InputError(f"{where}.{i}.{expected}", str(err).removeprefix(f"{expected}: ").removeprefix(
                "image: ").removeprefix("audio: ")) from None
    return torch.from_numpy(np.stack(rows))
