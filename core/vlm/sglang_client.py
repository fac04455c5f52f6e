"""Async HTTP client for SGLang's OpenAI-compatible chat completions, one request per image.

Why per-image requests and not batched `/generate`: a `/generate` list is all-or-nothing on the
server, so one undecodable image would fail its whole batch. Concurrency comes from keeping many
single requests in flight (bounded by a semaphore) so the server's continuous batching stays full.

Per request: temperature 0 and `max_completion_tokens` always sent (SGLang's defaults come from
the model and are unlimited); the task's JSON schema as `response_format`; the image as a base64
`data:` URL (a remote server cannot read our paths), prepared once per run for all tasks
(`core/vlm/prepare.py`). Connection errors, timeouts, 429 and 5xx
(SGLang answers 503 when its queue is full) are retried with exponential backoff and full jitter;
other 4xx are the request's fault and never retried. A `length` finish is recorded as truncated
and retried once with a larger token budget. Whatever comes back is validated again with pydantic.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from core.tasks.base import Task
from core.vlm.metrics import parse_prometheus, summarize
from core.vlm.prepare import data_url, jpeg_payload, prepare_images
from core.vlm.prompt import chat_messages
from core.vlm.types import ExtractionResult, ImageInput, PreparedImage, VLMBackend, judge

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
POOL_SHARD = 16


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one loads the CA bundle (a tenth of a second)."""
    return httpx.create_ssl_context()


class SGLangUnavailable(RuntimeError):
    """The server cannot be reached or is not ready; the message names the URL and the cause."""


class SGLangClientConfig(BaseModel):
    base_url: str = Field(description="http://host:port of an SGLang server or sglang-router.")
    api_key: str | None = Field(default=None, repr=False)
    model_id: str | None = Field(
        default=None, description="Recorded on rows; default: the server's /model_info model_path."
    )
    max_in_flight: int = Field(default=64, ge=1, description="Concurrent requests per batch.")
    timeout_s: float = Field(default=300.0, gt=0, description="Per request, incl. queueing.")
    max_attempts: int = Field(default=5, ge=1, description="Tries per image on transport errors.")
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    truncation_budget_factor: float = Field(default=2.0, ge=1.0)
    invalid_retries: int = Field(default=1, ge=0, description="Re-asks after an invalid answer.")
    max_image_side: int = Field(default=1536, ge=32, description="Longer sides are downscaled.")
    jpeg_quality: int = Field(default=90, ge=50, le=100)
    passthrough_max_bytes: int = Field(
        default=2_000_000,
        ge=0,
        description="An upright RGB/grey JPEG within max_image_side is sent as it is up to this "
        "size; 0 re-encodes every image.",
    )


def encode_image(
    source: Path | bytes,
    max_side: int = 1536,
    quality: int = 90,
    passthrough_max_bytes: int = 2_000_000,
) -> bytes:
    """The bytes sent for an image (a file's bytes, or a path): upright RGB (EXIF applied), at
    most `max_side`, JPEG."""
    data = source if isinstance(source, bytes) else source.read_bytes()
    return jpeg_payload(data, max_side, quality, passthrough_max_bytes)


__all__ = ["SGLangClient", "SGLangClientConfig", "SGLangUnavailable", "data_url", "encode_image"]


def request_body(task: Task, image_url: str, model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": chat_messages(task, image_url),
        "temperature": 0,
        "max_completion_tokens": max_tokens,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": task.name, "schema": task.json_schema, "strict": True},
        },
    }


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    message = body.get("message") if isinstance(body, dict) else None
    if message is None and isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error
    return f"HTTP {response.status_code}: {message or str(body)[:300]}"


class SGLangClient(VLMBackend):
    """The `sglang` backend. Construct cheaply; `check_ready()` before sending work."""

    def __init__(self, config: SGLangClientConfig) -> None:
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self._model_info: dict[str, Any] | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    # -- server facts -----------------------------------------------------------------------

    def check_ready(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """`/ready` then `/model_info`; raises `SGLangUnavailable` naming the URL and cause."""
        try:
            with httpx.Client(timeout=timeout_s, headers=self._headers()) as http:
                ready = http.get(f"{self.base_url}/ready")
                if ready.status_code != 200:
                    raise SGLangUnavailable(
                        f"SGLang server at {self.base_url} is not ready: /ready answered "
                        f"{_error_text(ready)}"
                    )
                info = http.get(f"{self.base_url}/model_info")
                if info.status_code != 200:
                    hint = " (check the API key)" if info.status_code in (401, 403) else ""
                    raise SGLangUnavailable(
                        f"SGLang server at {self.base_url} refused /model_info: "
                        f"{_error_text(info)}{hint}"
                    )
        except httpx.HTTPError as error:
            raise SGLangUnavailable(
                f"SGLang server at {self.base_url} is unreachable: {type(error).__name__}: {error}"
            ) from error
        self._model_info = info.json()
        return self._model_info

    @property
    def model_info(self) -> dict[str, Any]:
        if self._model_info is None:
            self.check_ready()
        assert self._model_info is not None
        return self._model_info

    @property
    def model_id(self) -> str:
        return self.config.model_id or str(self.model_info.get("model_path"))

    @property
    def served_model(self) -> str:
        return str(self.model_info.get("served_model_name") or self.model_info.get("model_path"))

    def server_metrics(self) -> dict[str, float]:
        """Summary of `/metrics` (needs `--enable-metrics`); empty when it is not mounted."""
        try:
            response = httpx.get(f"{self.base_url}/metrics", timeout=5.0, headers=self._headers())
        except httpx.HTTPError:
            return {}
        if response.status_code != 200:
            return {}
        return summarize(parse_prometheus(response.text))

    # -- extraction -------------------------------------------------------------------------

    def prepare(self, images: Sequence[ImageInput]) -> list[PreparedImage]:
        """Each image's `data:` URL, built once per run for all tasks."""
        config = self.config

        def payload(data: bytes) -> str:
            jpeg = jpeg_payload(
                data, config.max_image_side, config.jpeg_quality, config.passthrough_max_bytes
            )
            return data_url(jpeg)

        return prepare_images(images, payload)

    def extract(self, images: Sequence[ImageInput], task: Task) -> list[ExtractionResult]:
        return self.extract_prepared(self.prepare(images), task)

    def extract_prepared(
        self, prepared: Sequence[PreparedImage], task: Task
    ) -> list[ExtractionResult]:
        return self.extract_tasks([(task, prepared)])[0]

    def extract_tasks(
        self, jobs: Sequence[tuple[Task, Sequence[PreparedImage]]]
    ) -> list[list[ExtractionResult]]:
        """All tasks of a batch in flight together, so a large fleet never waits on one task."""
        return asyncio.run(self.extract_tasks_async(jobs))

    async def extract_async(
        self, images: Sequence[ImageInput], task: Task
    ) -> list[ExtractionResult]:
        prepared = await asyncio.to_thread(self.prepare, images)
        return (await self.extract_tasks_async([(task, prepared)]))[0]

    async def extract_tasks_async(
        self, jobs: Sequence[tuple[Task, Sequence[PreparedImage]]]
    ) -> list[list[ExtractionResult]]:
        model = self.served_model
        # httpcore scans its whole pool for every request it queues or finishes, so one pool of
        # hundreds of connections costs the client more CPU than the images do: spread the
        # requests over pools of at most POOL_SHARD connections.
        shards = -(-self.config.max_in_flight // POOL_SHARD)
        per_shard = -(-self.config.max_in_flight // shards)
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        gate = asyncio.Semaphore(self.config.max_in_flight)
        async with contextlib.AsyncExitStack() as stack:
            pools = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        timeout=self.config.timeout_s,
                        limits=limits,
                        headers=self._headers(),
                        verify=_ssl_context(),
                    )
                )
                for _ in range(shards)
            ]
            results = await asyncio.gather(
                *(
                    self._one(pools[i % shards], gate, image, task, model)
                    for i, (task, image) in enumerate(
                        (task, image) for task, prepared in jobs for image in prepared
                    )
                )
            )
        if results and not any(reached for _, reached in results):
            # No request of the batch reached the server: it went away. Fail loudly; the caller
            # writes nothing for this batch, and a rerun resumes here.
            raise SGLangUnavailable(
                f"SGLang server at {self.base_url} stopped answering: {results[0][0].error}"
            )
        out, start = [], 0
        for _, prepared in jobs:
            out.append([result for result, _ in results[start : start + len(prepared)]])
            start += len(prepared)
        return out

    async def _one(
        self,
        http: httpx.AsyncClient,
        gate: asyncio.Semaphore,
        prepared: PreparedImage,
        task: Task,
        model: str,
    ) -> tuple[ExtractionResult, bool]:
        """The image's result, and whether any request reached the server."""
        started = time.monotonic()
        config = self.config
        image = prepared.image
        if prepared.error is not None or prepared.payload is None:
            failure = ExtractionResult(
                image_id=image.image_id,
                status="error",
                error=prepared.error or "cannot read image: not prepared",
                attempts=0,
            )
            return failure, True
        url = prepared.payload
        budget = task.max_completion_tokens
        attempts = transport_failures = 0
        invalid_left = config.invalid_retries
        truncation_retried = False
        last_error = ""
        only_connection_errors = True
        while True:
            attempts += 1
            body = request_body(task, url, model, budget)
            retry_transport = False
            try:
                async with gate:
                    response = await http.post(f"{self.base_url}/v1/chat/completions", json=body)
            except httpx.TransportError as error:
                retry_transport = True
                last_error = f"{type(error).__name__}: {error}".rstrip(": ")
                if not isinstance(error, httpx.ConnectError):
                    only_connection_errors = False
            else:
                only_connection_errors = False
                if response.status_code in RETRYABLE_STATUS:
                    retry_transport = True
                    last_error = _error_text(response)
                elif response.status_code != 200:
                    failure = self._result(
                        image, "error", started, attempts, error=_error_text(response)
                    )
                    return failure, True
                else:
                    outcome = self._judge(image, task, response, budget, started, attempts)
                    if outcome.status == "truncated" and not truncation_retried:
                        truncation_retried = True
                        budget = int(budget * config.truncation_budget_factor)
                        continue
                    if outcome.status == "invalid" and invalid_left > 0:
                        invalid_left -= 1
                        continue
                    return outcome, True
            if retry_transport:
                transport_failures += 1
                if transport_failures >= config.max_attempts:
                    result = self._result(
                        image,
                        "error",
                        started,
                        attempts,
                        error=f"gave up after {transport_failures} tries: {last_error}",
                    )
                    return result, not only_connection_errors
                delay = min(
                    config.backoff_max_s, config.backoff_base_s * 2 ** (transport_failures - 1)
                )
                await asyncio.sleep(random.uniform(0, delay))

    def _judge(
        self,
        image: ImageInput,
        task: Task,
        response: httpx.Response,
        budget: int,
        started: float,
        attempts: int,
    ) -> ExtractionResult:
        try:
            payload = response.json()
            choice = payload["choices"][0]
            text = choice["message"].get("content")
            finish = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError) as error:
            return self._result(
                image, "error", started, attempts, error=f"malformed response: {error!r}"
            )
        usage = payload.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        verdict = judge(task, text, finish, budget)
        return self._result(
            image,
            verdict.status,
            started,
            attempts,
            raw_text=text,
            parsed=verdict.parsed,
            error=verdict.error,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cached_tokens=details.get("cached_tokens"),
        )

    @staticmethod
    def _result(
        image: ImageInput, status: str, started: float, attempts: int, **fields: Any
    ) -> ExtractionResult:
        return ExtractionResult(
            image_id=image.image_id,
            status=status,  # type: ignore[arg-type]
            latency_ms=(time.monotonic() - started) * 1000,
            attempts=attempts,
            **fields,
        )
