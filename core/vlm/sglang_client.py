"""Async HTTP client for SGLang's OpenAI-compatible chat completions, one request per image.

Why per-image requests and not batched `/generate`: a `/generate` list is all-or-nothing on the
server, so one undecodable image would fail its whole batch. Concurrency comes from keeping many
single requests in flight (bounded by a semaphore) so the server's continuous batching stays full.

Per request: temperature 0 and `max_completion_tokens` always sent (SGLang's defaults come from
the model and are unlimited); the image as a base64 `data:` URL (a remote server cannot read our
paths), prepared once per run for all tasks (`core/vlm/prepare.py`); the output constrained by a per-request EBNF grammar made from the task's JSON schema with
no free whitespace (`constraint="ebnf"`, the default). Why not `response_format`: SGLang compiles
that schema with free whitespace unless the server was started with
`--constrained-json-disable-any-whitespace`, and a weak model then loops on `\r\t...` until the
token limit; a client that connects by URL cannot know how the server was started.
`constraint="json_schema"` sends `response_format` and refuses a server whose
`/get_server_info` says whitespace is free.

Connection errors, timeouts, 408, 429 and every 5xx (SGLang answers 503 when its queue is full;
proxies 520-524) are retried with exponential backoff and full jitter, within an overall deadline per image; other
4xx are the request's fault: recorded as `rejected` (server message, file paths trimmed), never
retried. 401/403 fail the whole call at once (a wrong key is no image's fault). A `length`
finish is recorded as truncated and retried once with a larger token budget. Whatever comes back
is validated again with pydantic. Every request asks for the answer tokens' logprobs; an `ok`
answer's per-field confidence comes from them (`core/vlm/confidence.py`), NULL where the server
returns none.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
import ssl
import time
from collections.abc import Sequence
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from core.tasks.base import Task
from core.vlm.confidence import field_confidences, sglang_tokens
from core.vlm.metrics import parse_prometheus, summarize
from core.vlm.prepare import data_url, jpeg_payload, prepare_images
from core.vlm.prompt import DEFAULT_LAYOUT, Layout
from core.vlm.sglang_request import (
    compact_ebnf,
    encode_image,
    error_text,
    request_body,
    trim_server_message,
)
from core.vlm.types import ExtractionResult, ImageInput, PreparedImage, VLMBackend, judge

# 408 and every 5xx (a proxy's 520-524, 507 out of storage, 501 from a gateway...) are the
# server's trouble, never the request's: retried. Other 4xx are final (`rejected`).
RETRYABLE_4XX = frozenset({408})


def retryable(status: int) -> bool:
    """Whether an answer with this HTTP status is worth sending again (busy ones aside)."""
    return status in RETRYABLE_4XX or 500 <= status <= 599


POOL_SHARD = 16


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one loads the CA bundle (a tenth of a second)."""
    return httpx.create_ssl_context()


# "Busy" answers (SGLang's 503 "The request queue is full.", 429): the server is healthy and
# asks us to wait, so they are retried until the image's deadline, not `max_attempts` times.
BUSY_STATUS = frozenset({429, 503})
AUTH_STATUS = frozenset({401, 403})

_log = logging.getLogger(__name__)


class PriorityGate:
    """A semaphore whose priority waiters go first: an image's later tasks run before other
    images' first tasks, while the image is still in the server's prefix cache."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: tuple[collections.deque, collections.deque] = (
            collections.deque(),
            collections.deque(),
        )

    @contextlib.asynccontextmanager
    async def slot(self, priority: bool = False):
        if self._free > 0 and not any(self._waiters):
            self._free -= 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            queue = self._waiters[0 if priority else 1]
            queue.append(waiter)
            try:
                await waiter  # the releaser handed its slot to us
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # handed over just as we were cancelled: pass it on
                elif waiter in queue:
                    queue.remove(waiter)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        for queue in self._waiters:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1


class SGLangUnavailable(RuntimeError):
    """The server cannot be reached or is not ready; the message names the URL and the cause."""


class SGLangAuthError(SGLangUnavailable):
    """The server refused our credentials (401/403): fails fast, never retried."""


class SGLangServerSettingsError(SGLangUnavailable):
    """The server's settings make the requested constraint unsafe (free JSON whitespace)."""


class SGLangClientConfig(BaseModel):
    base_url: str = Field(description="http://host:port of an SGLang server or sglang-router.")
    api_key: str | None = Field(default=None, repr=False)
    model_id: str | None = Field(
        default=None, description="Recorded on rows; default: the server's /model_info model_path."
    )
    max_in_flight: int = Field(default=64, ge=1, description="Concurrent requests per batch.")
    timeout_s: float = Field(default=300.0, gt=0, description="Per request, incl. queueing.")
    image_deadline_s: float = Field(
        default=900.0,
        gt=0,
        description="Per image, all tries and backoff together, from its first send.",
    )
    constraint: Literal["ebnf", "json_schema"] = Field(
        default="ebnf",
        description="ebnf: a compact grammar per request (safe on any server); json_schema: "
        "response_format, needs a server started with --constrained-json-disable-any-whitespace.",
    )
    layout: Layout = Field(
        default=DEFAULT_LAYOUT,
        description="image_first: the image before the instruction, so an image's tasks share "
        "its prefill; instruction_first: the old layout (benchmarks/prefill.py compares them).",
    )
    stagger_tasks: bool = Field(
        default=True,
        description="Send an image's other tasks once its first task has answered, so they find "
        "the image in the server's prefix cache instead of all prefilling it at once.",
    )
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
    logprobs: bool = Field(
        default=True,
        description="Ask for the answer tokens' logprobs (per-field confidence); off only for a "
        "server that refuses the field. A server that ignores it gives NULL confidence.",
    )


__all__ = [
    "SGLangClient",
    "SGLangClientConfig",
    "SGLangUnavailable",
    "compact_ebnf",
    "data_url",
    "encode_image",
    "request_body",
    "trim_server_message",
]


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
        """`/ready`, `/get_model_info` and, for `json_schema`, the server's whitespace setting.

        Through sglang-router (no `/ready`, no `/model_info` alias) `/readiness` stands in for
        `/ready`; both names below are the ones the server and the router serve.

        Raises `SGLangUnavailable` (or `SGLangAuthError`) naming the URL and the cause.
        """
        try:
            with httpx.Client(timeout=timeout_s, headers=self._headers()) as http:
                ready = http.get(f"{self.base_url}/ready")
                if ready.status_code == 404:  # sglang-router: 200 once a worker is healthy
                    ready = http.get(f"{self.base_url}/readiness")
                if ready.status_code != 200:
                    raise SGLangUnavailable(
                        f"SGLang server at {self.base_url} is not ready: /ready answered "
                        f"{error_text(ready)}"
                    )
                info = http.get(f"{self.base_url}/get_model_info")
                if info.status_code in AUTH_STATUS:
                    raise SGLangAuthError(
                        f"SGLang server at {self.base_url} refused /get_model_info: "
                        f"{error_text(info)} (check the API key)"
                    )
                if info.status_code != 200:
                    raise SGLangUnavailable(
                        f"SGLang server at {self.base_url} refused /get_model_info: "
                        f"{error_text(info)}"
                    )
                if self.config.constraint == "json_schema":
                    self._check_whitespace_setting(http)
        except httpx.HTTPError as error:
            raise SGLangUnavailable(
                f"SGLang server at {self.base_url} is unreachable: {type(error).__name__}: {error}"
            ) from error
        self._model_info = info.json()
        return self._model_info

    def _check_whitespace_setting(self, http: httpx.Client) -> None:
        """`response_format` is only safe when the server compiles schemas without whitespace."""
        answer = http.get(f"{self.base_url}/get_server_info")
        if answer.status_code != 200:
            _log.warning(
                "SGLang server at %s: /get_server_info answered %s; cannot check that JSON "
                "whitespace is disabled (constraint='json_schema')",
                self.base_url,
                answer.status_code,
            )
            return
        if not answer.json().get("constrained_json_disable_any_whitespace", False):
            raise SGLangServerSettingsError(
                f"SGLang server at {self.base_url} allows free whitespace in JSON-schema output "
                "(started without --constrained-json-disable-any-whitespace): weak models loop "
                "on whitespace until the token limit. Use constraint='ebnf' (the default) or "
                "restart the server with that flag."
            )

    @property
    def model_info(self) -> dict[str, Any]:
        if self._model_info is None:
            self.check_ready()
        assert self._model_info is not None
        return self._model_info

    @property
    def model_id(self) -> str:
        """Recorded on rows: the configured id, else the name the server serves the model as."""
        return self.config.model_id or self.served_model

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

    def _server_answers(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

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
        gate = PriorityGate(self.config.max_in_flight)
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
            flat = [(task, image) for task, prepared in jobs for image in prepared]
            pending = self._schedule(flat, pools, gate, model)
            try:
                results = [r for group in await asyncio.gather(*pending) for r in group]
            except BaseException:
                for job in pending:  # a 401 (or a cancel): nothing of this batch is kept
                    job.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                raise
        ordered = [outcome for _, outcome in sorted(results, key=lambda item: item[0])]
        transport_failed = [r for r, _ in ordered if r.status == "error" and r.attempts]
        if ordered and not any(reached for _, reached in ordered):
            # No request of the batch reached the server: it went away. Fail loudly; the caller
            # writes nothing for this batch, and a rerun resumes here.
            raise SGLangUnavailable(
                f"SGLang server at {self.base_url} stopped answering: {ordered[0][0].error}"
            )
        if transport_failed and not await asyncio.to_thread(self._server_answers):
            # Some requests were in flight when the server died: the batch is not written at
            # all (no half batch); a rerun extracts exactly the images that have no row.
            raise SGLangUnavailable(
                f"SGLang server at {self.base_url} stopped answering during the batch: "
                f"{transport_failed[0].error}"
            )
        out, start = [], 0
        for _, prepared in jobs:
            out.append([result for result, _ in ordered[start : start + len(prepared)]])
            start += len(prepared)
        return out

    def _schedule(
        self,
        flat: Sequence[tuple[Task, PreparedImage]],
        pools: Sequence[httpx.AsyncClient],
        gate: PriorityGate,
        model: str,
    ) -> list[asyncio.Future]:
        """One future per image (`stagger_tasks`) or per request, each resolving to
        [(position in `flat`, (result, reached))]."""
        shards = len(pools)
        if not self.config.stagger_tasks:
            return [
                asyncio.ensure_future(self._at(i, pools[i % shards], gate, image, task, model))
                for i, (task, image) in enumerate(flat)
            ]
        by_image: dict[str, list[int]] = {}
        for i, (_, image) in enumerate(flat):
            by_image.setdefault(image.image.image_id, []).append(i)

        async def image_tasks(positions: list[int]) -> list[tuple[int, Any]]:
            # The first task prefills the image; the others then find it in the prefix cache.
            # They go ahead of other images' first tasks (priority), so the image is still
            # cached when they run. Each keeps its own retries and row: a failed first task
            # does not stop them.
            first, *rest = positions
            http = pools[first % shards]
            task, image = flat[first]
            done = [(first, await self._one(http, gate, image, task, model))]
            followers = [
                self._one(http, gate, flat[i][1], flat[i][0], model, priority=True) for i in rest
            ]
            done += list(zip(rest, await asyncio.gather(*followers), strict=True))
            return done

        return [asyncio.ensure_future(image_tasks(p)) for p in by_image.values()]

    async def _at(self, position: int, *args: Any) -> list[tuple[int, Any]]:
        return [(position, await self._one(*args))]

    async def _one(
        self,
        http: httpx.AsyncClient,
        gate: PriorityGate,
        prepared: PreparedImage,
        task: Task,
        model: str,
        priority: bool = False,
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
        attempts = transport_failures = busy_answers = 0
        invalid_left = config.invalid_retries
        truncated: ExtractionResult | None = None  # the first, smaller budget's answer
        last_error = ""
        only_connection_errors = True
        deadline: float | None = None  # starts at the first send, not while waiting our turn

        def past_deadline() -> tuple[ExtractionResult, bool]:
            error = (
                f"deadline of {config.image_deadline_s:g}s per image passed after "
                f"{attempts} tries" + (f": {last_error}" if last_error else "")
            )
            return self._result(image, "error", started, attempts, error=error), True

        while True:
            body = request_body(
                task, url, model, budget, config.constraint, config.layout, config.logprobs
            )
            retry_transport = busy = False
            try:
                async with gate.slot(priority):
                    now = time.monotonic()
                    deadline = deadline or now + config.image_deadline_s
                    if now >= deadline:
                        return past_deadline()
                    attempts += 1
                    response = await asyncio.wait_for(
                        http.post(f"{self.base_url}/v1/chat/completions", json=body),
                        timeout=deadline - now,
                    )
            except TimeoutError:  # the same class from Python 3.11
                return past_deadline()
            except httpx.TransportError as error:
                retry_transport = True
                last_error = f"{type(error).__name__}: {error}".rstrip(": ")
                if not isinstance(error, httpx.ConnectError):
                    only_connection_errors = False
            else:
                only_connection_errors = False
                status = response.status_code
                if status in AUTH_STATUS:
                    raise SGLangAuthError(
                        f"SGLang server at {self.base_url} refused the request: "
                        f"{error_text(response)} (check the API key)"
                    )
                if status in BUSY_STATUS:
                    busy_answers += 1
                    busy = True
                    last_error = error_text(response)
                elif retryable(status):
                    retry_transport = True
                    last_error = error_text(response)
                elif status != 200:
                    if truncated is not None:  # the larger budget no longer fits the context
                        note = f"{truncated.error}; larger budget refused: {error_text(response)}"
                        return truncated.model_copy(update={"error": note}), True
                    failure = self._result(
                        image, "rejected", started, attempts, error=error_text(response)
                    )
                    return failure, True
                else:
                    outcome = self._judge(image, task, response, budget, started, attempts)
                    if outcome.status == "truncated" and truncated is None:
                        truncated = outcome
                        budget = int(budget * config.truncation_budget_factor)
                        continue
                    if outcome.status == "invalid" and invalid_left > 0:
                        invalid_left -= 1
                        continue
                    return outcome, True
            if retry_transport:
                transport_failures += 1
            if retry_transport or busy:
                if retry_transport and transport_failures >= config.max_attempts:
                    result = self._result(
                        image,
                        "error",
                        started,
                        attempts,
                        error=f"gave up after {transport_failures} tries: {last_error}",
                    )
                    return result, not only_connection_errors
                tries = transport_failures + busy_answers
                delay = min(config.backoff_max_s, config.backoff_base_s * 2 ** min(tries - 1, 20))
                pause = random.uniform(0, delay)
                if deadline is not None and time.monotonic() + pause >= deadline:
                    return past_deadline()
                await asyncio.sleep(pause)

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
        confidence = (
            field_confidences(text, sglang_tokens(choice))
            if verdict.status == "ok" and text is not None
            else None
        )
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
            confidence=confidence,
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
