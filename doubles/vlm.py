"""A test implementation of the `vlm` resource: the tiny stand-in model, scripted to misbehave.

Tests pass `ScriptedVLM(...)` as the `vlm` resource where a deployment passes `VLMResource`;
Dagster opens and closes it like the real one. It is configured, not patched: a crash after N
batches (like a killed run), answers that break every schema, and a log of what was asked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from core.tasks.base import Task
from core.vlm.standin import STANDIN_MODEL_ID
from core.vlm.types import ExtractionResult, ImageInput, VLMBackend
from doubles.sglang_server import standin_backend
from resources.vlm import VLM

INVALID_ERROR = "scenery: not allowed"


class ScriptedBackend(VLMBackend):
    """The stand-in's answers (or invalid ones), a crash after `crash_after` batches."""

    def __init__(
        self,
        model_id: str,
        answers: Literal["standin", "invalid"],
        crash_after: int | None,
        request_log: Path | None,
    ) -> None:
        self._model_id = model_id
        self.answers = answers
        self.crash_after = crash_after
        self.request_log = request_log
        self.batches = 0

    @property
    def model_id(self) -> str:
        return self._model_id

    def extract(self, images: Sequence[ImageInput], task: Task) -> list[ExtractionResult]:
        if self.crash_after is not None and self.batches >= self.crash_after:
            raise KeyboardInterrupt("killed")  # like the run process being killed
        self.batches += 1
        if self.request_log is not None:
            with self.request_log.open("a") as handle:
                handle.write(json.dumps([i.image_id for i in images]) + "\n")
        if self.answers == "invalid":
            return [
                ExtractionResult(image_id=i.image_id, status="invalid", error=INVALID_ERROR)
                for i in images
            ]
        return standin_backend().extract(images, task)


class ScriptedVLM(VLM):
    """The `vlm` resource's test implementation (see the module docstring)."""

    answers: Literal["standin", "invalid"] = Field(
        default="standin", description="standin: the tiny model's answers; invalid: none parse."
    )
    model_id: str = STANDIN_MODEL_ID
    crash_after_batches: int | None = Field(
        default=None, ge=0, description="Raise KeyboardInterrupt on the batch after this many."
    )
    request_log: str | None = Field(
        default=None, description="File that gets one JSON list of image ids per batch asked."
    )

    def open_backend(self, log: dg.DagsterLogManager | None = None) -> VLMBackend:
        return ScriptedBackend(
            self.model_id,
            self.answers,
            self.crash_after_batches,
            Path(self.request_log) if self.request_log else None,
        )


def requested_batches(request_log: Path) -> list[list[str]]:
    """The image ids of each batch a `ScriptedVLM` was asked, in order."""
    if not request_log.exists():
        return []
    return [json.loads(line) for line in request_log.read_text().splitlines() if line]
