"""The backend interface and the result every backend returns, one per image."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.tasks.base import Task, TaskOutputError

# ok: parsed and valid; invalid: violates the schema; truncated: hit the token limit; rejected:
# the server refused the request (4xx other than auth/rate limits: deterministic, not retried);
# error: transport, server or file trouble (transient, retried by the next run);
# unavailable / changed_since_ingest: no file of the image still holds the bytes its id names
# (core/copies.py), so the image never reached the model.
Status = Literal[
    "ok", "invalid", "truncated", "rejected", "error", "unavailable", "changed_since_ingest"
]
STATUSES: tuple[Status, ...] = (
    "ok",
    "invalid",
    "truncated",
    "rejected",
    "error",
    "unavailable",
    "changed_since_ingest",
)


class ImageInput(BaseModel):
    """One image to label: its content id and where its bytes are."""

    model_config = ConfigDict(frozen=True)

    image_id: str
    path: Path
    # The file's bytes, read once by `core.files` and checked to hash to `image_id`; backends
    # decode these instead of reopening `path` (which could have changed since).
    data: bytes | None = None


class PreparedImage(BaseModel):
    """An image read and decoded once per run, ready for every task: a backend's payload or why not.

    `payload` is backend-specific (a JPEG `data:` URL for SGLang, a picture for transformers).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    image: ImageInput
    payload: Any = None
    error: str | None = None


class ExtractionResult(BaseModel):
    """What became of one image for one task: a parsed answer or a failure with its reason."""

    image_id: str
    status: Status
    raw_text: str | None = None
    parsed: dict[str, Any] | None = None
    error: str | None = None
    latency_ms: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    attempts: int = Field(default=1, ge=0)
    # `ok` answers: each value's confidence by path (`core/vlm/confidence.py`), None per value
    # where the backend returned no usable logprobs; None for any other status.
    confidence: dict[str, float | None] | None = None


class Judgement(BaseModel):
    status: Status
    parsed: dict[str, Any] | None = None
    error: str | None = None


def judge(task: Task, text: str | None, finish_reason: str | None, max_tokens: int) -> Judgement:
    """Classify one generation: truncated at the token limit, invalid for the schema, or ok.

    The server's constraint is not trusted: every output is validated again with pydantic.
    """
    if finish_reason == "length":
        return Judgement(
            status="truncated", error=f"output hit the token limit ({max_tokens} tokens)"
        )
    if text is None:
        return Judgement(status="invalid", error=f"no content (finish_reason={finish_reason})")
    try:
        parsed = task.parse(text)
    except TaskOutputError as error:
        return Judgement(status="invalid", error=str(error))
    return Judgement(status="ok", parsed=parsed.model_dump(mode="json"))


class VLMBackend(abc.ABC):
    """Labels batches of images for a task; one image's failure never fails the batch.

    A run prepares each batch once (`prepare`) and asks every task about the same prepared
    images (`extract_tasks`), so no image is read or decoded once per task. Backends without a
    preparation step implement `extract` only; the defaults then pass the images through.
    """

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """Recorded on every row, so results of different models never mix."""

    @abc.abstractmethod
    def extract(self, images: Sequence[ImageInput], task: Task) -> list[ExtractionResult]:
        """One result per input image, in input order."""

    def prepare(self, images: Sequence[ImageInput]) -> list[PreparedImage]:
        """Read and decode each image once for all tasks; default: nothing to prepare."""
        return [PreparedImage(image=image) for image in images]

    def extract_prepared(
        self, prepared: Sequence[PreparedImage], task: Task
    ) -> list[ExtractionResult]:
        """One result per prepared image, in order; default: `extract` on the images."""
        return self.extract([p.image for p in prepared], task)

    def extract_tasks(
        self, jobs: Sequence[tuple[Task, Sequence[PreparedImage]]]
    ) -> list[list[ExtractionResult]]:
        """Several tasks over prepared images, one result list per job; default: one by one."""
        return [self.extract_prepared(prepared, task) for task, prepared in jobs]

    def server_metrics(self) -> dict[str, float]:
        """Server-side counters for asset metadata, where the backend has a server."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release models or connections."""
