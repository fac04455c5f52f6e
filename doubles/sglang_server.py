"""A test double of SGLang's HTTP API (0.5.23), served on 127.0.0.1 from a background thread.

It speaks SGLang 0.5.23's wire format, checked against the released server (the contract test
`tests/integration/test_sglang_real.py` sends the same requests to both): `POST
/v1/chat/completions` with `image_url` data-URL parts and either an `ebnf` grammar or a
`json_schema` response format (compiled with free whitespace unless `disable_any_whitespace`,
as the real server without `--constrained-json-disable-any-whitespace`), `GET /ready` (503 until
ready), `/health`, `/model_info`, `/get_server_info`, `/v1/models`, `/metrics` (Prometheus
text), OpenAI-style flat error bodies, 401 `{"error": "Unauthorized"}` without the API key
(`/health*`, `/ready*`, `/metrics*` exempt), and 503 "The request queue is full." only when its
queue (`max_queued`) is full. Answers come from the tiny in-process LLaVA stand-in, constrained
with xgrammar; they are cached per (image, prompt, grammar, budget), so a long benchmark does
not spend its CPU on the model. With `"logprobs": true` an answer carries
`choices[0].logprobs.content` as the real server words it: the stand-in's own tokens and
logprobs (stop token last), or, for schema answers, 3-byte pseudo-tokens (`logprobs_content`).

Knobs: `service_time_s` (each request holds one of `capacity` slots at least this long),
`capacity`, `max_queued` (more waiting requests get 503), `error_rate` (random 503s: fault
injection for the benchmark only, 0 by default; the real server never sends them),
`drop_rate` (connection closed mid-response), `truncate_rate`, and `faults`: per image (key =
`image_key(jpeg bytes)`) a list of modes consumed one per request: `ok`, `503`, `500`, `400`,
`drop`, and the constrained-output failure modes seen in SGLang/vLLM trackers: `unclosed` (JSON
cut at the token limit), `whitespace` (newlines until the limit), `extra_key`, `bad_enum`.

A fleet, for the client benchmark: `servers` (N servers of `capacity` slots each behind one URL,
each request routed to the one with the fewest running plus waiting requests, as sglang-router's
load-aware policy; the router hop is not a second HTTP request) and `answers="schema"`: no model,
an answer built afresh per request from the task's schema (the enum value rotates), so the double
costs little CPU and never caches; with `vary_by="image"` (`--vary-by image`) the answer is a
function of the image and the schema instead, so two runs over the same images agree (what the
multi-run benchmark compares). `GET /stats` reports slot-seconds used, requests served and
this process's CPU seconds; `POST /stats/reset` zeroes them. `python -m doubles.sglang_server
--servers 16 --capacity 8 --service-time 1.5 --port-file F` serves such a fleet in its own
process (what `benchmarks/extract_client.py` runs).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import random
import re
import socket
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from core.tasks.registry import TASKS
from core.vlm.sglang_request import compact_ebnf
from core.vlm.transformers_backend import TransformersBackend

FAULT_MODES = (
    "ok",
    "503",
    "500",
    "400",
    "drop",
    "unclosed",
    "whitespace",
    "extra_key",
    "bad_enum",
    "501",
    "507",
    "520",
)
# Other 5xx a server or a proxy in front of it may answer (not SGLang's own): as `500`.
OTHER_5XX = {"501": "Not Implemented", "507": "Insufficient Storage", "520": "Unknown Error"}
AUTH_EXEMPT = ("/health", "/ready", "/metrics")  # prefixes, as sglang/srt/utils/auth.py
IMAGE_TOKENS = 16  # the stand-in's image: (32 px / patch 8) ** 2 tokens
FLEET_MODEL = "sim/llava-fleet"
WORDS = ("red", "dark blue", "white", "green", "light grey")


def image_key(image_bytes: bytes) -> str:
    return hashlib.sha256(image_bytes).hexdigest()


def logprobs_content(text: str, tokens: list[tuple[bytes, float]] | None) -> list[dict[str, Any]]:
    """`choices[0].logprobs.content` as SGLang words it (`top_logprobs` empty unless asked).

    From the model's own tokens and logprobs (its stop token last, as the real server); where
    there are none (schema answers) or a fault mode rewrote the text, the text cut into 3-byte
    pieces with logprob -0.1 each: a simulation that only keeps the wire shape and its cost."""
    data = text.encode()
    if tokens is None or b"".join(piece for piece, _ in tokens)[: len(data)] != data:
        tokens = [(data[i : i + 3], -0.1) for i in range(0, len(data), 3)]
    return [
        {
            "token": piece.decode(errors="replace"),
            "bytes": list(piece),
            "logprob": logprob,
            "top_logprobs": [],
        }
        for piece, logprob in tokens
    ]


def schema_answer(schema: dict[str, Any], n: int) -> Any:
    """A value valid for `schema`, different from request to request (never a cached answer)."""
    if "enum" in schema:
        return schema["enum"][n % len(schema["enum"])]
    kind = schema.get("type")
    if kind == "object":
        return {
            key: schema_answer(sub, n + i)
            for i, (key, sub) in enumerate(schema["properties"].items())
        }
    if kind == "array":
        count = min(schema.get("maxItems", 2), n % 3)
        return [schema_answer(schema["items"], n + i) for i in range(count)]
    if kind == "string":
        pattern = schema.get("pattern")
        word = WORDS[n % len(WORDS)]
        if pattern and not re.fullmatch(pattern, word):
            raise ValueError(f"no canned string matches {pattern!r}")
        return word
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return n % 2 == 0
    raise ValueError(f"unsupported schema {schema!r}")


_TASK_SCHEMAS: dict[str, dict[str, Any]] = {}


def schema_of_grammar(grammar: str) -> dict[str, Any] | None:
    """The built-in task schema whose compact grammar the client sent (answered from the schema,
    as a constrained model would), or None for a grammar of no built-in task."""
    if not _TASK_SCHEMAS:
        _TASK_SCHEMAS.update({compact_ebnf(t.schema_json): t.json_schema for t in TASKS.values()})
    return _TASK_SCHEMAS.get(grammar)


def _error(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return JSONResponse(body, status_code=status)


class _DroppedConnection(Exception):
    """Raised after the response head: uvicorn then closes the socket mid-body."""


@dataclass
class FakeSGLangConfig:
    model_path: str = "standin/tiny-llava-v2"  # the stand-in it serves (core.vlm.standin)
    served_model_name: str | None = None
    service_time_s: float = 0.0
    capacity: int = 8
    servers: int = 1  # simulated servers behind one URL, `capacity` slots each
    answers: Literal["model", "schema"] = "model"  # schema: no model, built per request
    # schema answers vary by request (a counter) or are a function of the image and the schema
    # (`image`: the same image and task always get the same answer, as a deterministic model's)
    vary_by: Literal["request", "image"] = "request"
    max_queued: int | None = None
    error_rate: float = 0.0
    drop_rate: float = 0.0
    truncate_rate: float = 0.0
    api_key: str | None = None
    disable_any_whitespace: bool = False  # --constrained-json-disable-any-whitespace
    enable_metrics: bool = True
    enable_cache_report: bool = True
    context_length: int = 4096
    seed: int = 0
    faults: dict[str, list[str]] = field(default_factory=dict)


class FakeSGLangServer:
    """Start with `with FakeSGLangServer(backend, config) as server: server.url`."""

    def __init__(self, backend: TransformersBackend | None, config: FakeSGLangConfig | None = None):
        self.config = config or FakeSGLangConfig()
        if backend is None and self.config.answers == "model":
            raise ValueError("answers='model' needs the stand-in backend")
        self.backend: TransformersBackend = backend  # type: ignore[assignment]
        self.ready = True
        self.rng = random.Random(self.config.seed)
        self.requests_by_key: dict[str, int] = defaultdict(int)
        self.counters: dict[str, float] = defaultdict(float)
        self.modes_served: dict[str, int] = defaultdict(int)
        self.log: list[tuple[str, int | None, str]] = []  # (image key, token budget, mode)
        self._cache: dict[tuple[str, str, str, int], tuple[str, str, int, int]] = {}
        self._prefixes: set[str] = set()
        self._model_lock = threading.Lock()
        self._running = 0
        self._waiting = 0
        self._slots: list[asyncio.Semaphore] | None = None
        self._load = [0] * self.config.servers  # running + waiting, per simulated server
        self._answered = 0
        self._cpu_at_reset = time.process_time()
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeSGLangServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(), log_level="critical", access_log=False, timeout_keep_alive=30
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake SGLang server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- model ------------------------------------------------------------------------------

    def _grammar(self, kind: str, text: str) -> object:
        with self._model_lock:
            return self.backend.compile_grammar(
                kind, text, any_whitespace=not self.config.disable_any_whitespace
            )

    def _generate(
        self,
        image_bytes: bytes,
        prompt: str,
        grammar_spec: tuple[str, str] | None,
        max_tokens: int,
    ) -> tuple[str, str, int, int, list[tuple[bytes, float]] | None]:
        grammar = self._grammar(*grammar_spec) if grammar_spec else None
        key = (image_key(image_bytes), prompt, repr(grammar_spec), max_tokens)
        with self._model_lock:
            if key not in self._cache:
                picture = Image.open(io.BytesIO(image_bytes)).convert("RGB")
                self._cache[key] = self.backend.generate(
                    [picture], prompt, None, max_tokens, grammar=grammar
                )[0]
            return self._cache[key]

    def _prompt(self, messages: list[dict[str, Any]]) -> str:
        converted = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                content = [
                    {"type": "image"} if part.get("type") == "image_url" else part
                    for part in content
                ]
            converted.append({"role": message["role"], "content": content})
        self.backend._load()
        return self.backend._processor.apply_chat_template(
            converted, add_generation_prompt=True, tokenize=False
        )

    def _prompt_length(self, prompt: str, images: int) -> int:
        tokens = len(self.backend._processor.tokenizer(prompt)["input_ids"])
        return tokens + images * (IMAGE_TOKENS - 1)  # each <image> expands to its patches

    def _cached_tokens(self, prompt: str) -> int:
        """Radix-cache stand-in: the text before the image is shared once any request sent it."""
        prefix = prompt.split("<image>", 1)[0]
        tokens = len(self.backend._processor.tokenizer(prefix)["input_ids"])
        with self._model_lock:
            seen = prefix in self._prefixes
            self._prefixes.add(prefix)
        return tokens if seen else 0

    # -- routes -----------------------------------------------------------------------------

    def app(self) -> Any:
        routes = [
            Route("/ready", self._ready),
            Route("/health", self._health),
            Route("/health_generate", self._health),
            Route("/model_info", self._model_info),
            Route("/get_model_info", self._model_info),
            Route("/get_server_info", self._server_info),
            Route("/v1/models", self._models),
            Route("/metrics", self._metrics),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/stats", self._stats),
            Route("/stats/reset", self._reset_stats, methods=["POST"]),
        ]
        app = Starlette(routes=routes)

        async def with_auth(scope: Any, receive: Any, send: Any) -> None:
            key = self.config.api_key  # read per request: tests rotate it
            if scope["type"] == "http" and key and not scope["path"].startswith(AUTH_EXEMPT):
                headers = dict(scope.get("headers") or [])
                if headers.get(b"authorization", b"").decode() != f"Bearer {key}":
                    self.counters["unauthorized"] += 1
                    response = JSONResponse({"error": "Unauthorized"}, status_code=401)
                    await response(scope, receive, send)
                    return
            await app(scope, receive, send)

        return with_auth

    def stats(self) -> dict[str, Any]:
        """Load on the double: slot-seconds used, answers served, faults, this process's CPU."""
        c = self.counters
        return {
            "servers": self.config.servers,
            "capacity": self.config.capacity,
            "service_time_s": self.config.service_time_s,
            "served": int(c["served"]),
            "rejected_503": int(c["rejected_503"]),
            "dropped": int(c["dropped"]),
            "slot_busy_s": c["busy_s"],
            "cpu_s": time.process_time() - self._cpu_at_reset,
        }

    async def _stats(self, request: Request) -> Response:
        return JSONResponse(self.stats())

    async def _reset_stats(self, request: Request) -> Response:
        for key in ("served", "rejected_503", "dropped", "busy_s"):
            self.counters[key] = 0.0
        self._cpu_at_reset = time.process_time()
        return JSONResponse(self.stats())

    async def _ready(self, request: Request) -> Response:
        if not self.ready:
            return Response(status_code=503)
        return Response(status_code=200)  # the real server: empty body

    async def _health(self, request: Request) -> Response:
        return Response(status_code=200 if self.ready else 503)

    @property
    def _served(self) -> str:
        return self.config.served_model_name or self.config.model_path

    async def _model_info(self, request: Request) -> Response:
        return JSONResponse(
            {
                "model_path": self.config.model_path,
                "tokenizer_path": self.config.model_path,
                "served_model_name": self._served,
                "is_generation": True,
                "has_image_understanding": True,
                "model_type": "llava",
                "architectures": ["LlavaForConditionalGeneration"],
                "weight_version": "default",
                "preferred_sampling_params": None,
            }
        )

    async def _server_info(self, request: Request) -> Response:
        """The few `/get_server_info` fields a client reads (the real one has ~400)."""
        return JSONResponse(
            {
                "model_path": self.config.model_path,
                "served_model_name": self._served,
                "constrained_json_disable_any_whitespace": self.config.disable_any_whitespace,
                "grammar_backend": "xgrammar",
                "context_length": self.config.context_length,
                "max_queued_requests": self.config.max_queued,
                "enable_metrics": self.config.enable_metrics,
                "host": "127.0.0.1",
                "port": self.port,
                "version": "0.5.23",
            }
        )

    async def _models(self, request: Request) -> Response:
        data = [
            {
                "id": self._served,
                "object": "model",
                "owned_by": "sglang",
                "root": self.config.model_path,
                "max_model_len": self.config.context_length,
            }
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _metrics(self, request: Request) -> Response:
        if not self.config.enable_metrics:
            return PlainTextResponse("Not Found", status_code=404)
        labels = f'{{model_name="{self._served}",engine_type="unified",tp_rank="0",pp_rank="0"}}'
        c = self.counters
        elapsed = max(1e-9, c["busy_s"])
        lines = [
            "# TYPE sglang:prompt_tokens_total counter",
            f"sglang:prompt_tokens_total{labels} {c['prompt_tokens']}",
            f'sglang:cached_tokens_total{{cache_source="device",model_name="{self._served}"}} '
            f"{c['cached_tokens']}",
            f"sglang:generation_tokens_total{labels} {c['completion_tokens']}",
            f"sglang:num_requests_total{labels} {c['requests']}",
            f"sglang:num_running_reqs{labels} {self._running}",
            f"sglang:num_queue_reqs{labels} {self._waiting}",
            f"sglang:gen_throughput{labels} {c['completion_tokens'] / elapsed:.3f}",
            f"sglang:cache_hit_rate{labels} {c['last_hit_rate']}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    def _next_mode(self, key: str) -> str:
        scripted = self.config.faults.get(key)
        index = self.requests_by_key[key]
        self.requests_by_key[key] += 1
        if scripted and index < len(scripted):
            return scripted[index]
        roll = self.rng.random()
        if roll < self.config.error_rate:
            return "503"
        if roll < self.config.error_rate + self.config.drop_rate:
            return "drop"
        if roll < self.config.error_rate + self.config.drop_rate + self.config.truncate_rate:
            return "unclosed"
        return "ok"

    async def _chat(self, request: Request) -> Response:
        if "application/json" not in request.headers.get("content-type", ""):
            return _error(400, "Content-Type must be application/json")
        try:
            body = await request.json()
        except ValueError as error:
            return _error(400, f"JSON decode error: {error}", "Bad Request")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages: Field required", "Bad Request")
        schema = None
        response_format = body.get("response_format")
        if response_format and response_format.get("type") == "json_schema":
            spec = response_format.get("json_schema") or {}
            if "name" not in spec:
                return _error(400, "json_schema.name: Field required", "Bad Request")
            if spec.get("schema") is None:
                return _error(400, "schema_ is required for json_schema response format request.")
            schema = json.dumps(spec["schema"], separators=(",", ":"))
        grammar_spec = ("ebnf", body["ebnf"]) if body.get("ebnf") else None
        if grammar_spec is None and schema is not None:
            grammar_spec = ("json_schema", schema)
        if self.config.answers == "schema":
            answer_schema = (
                schema_of_grammar(grammar_spec[1])
                if grammar_spec and grammar_spec[0] == "ebnf"
                else json.loads(schema)
                if schema is not None
                else None
            )
            if answer_schema is None:
                return _error(
                    400, "messages and an ebnf of a built-in task or a json_schema are required"
                )
            grammar_spec = ("schema", json.dumps(answer_schema))
        elif grammar_spec is not None:
            try:
                await asyncio.to_thread(self._grammar, *grammar_spec)
            except Exception as error:
                kind = "json" if grammar_spec[0] == "json_schema" else "EBNF"
                return _error(400, f"Failed to compile {kind} grammar: {error}")
        images = [
            part["image_url"]["url"]
            for message in messages
            if isinstance(message.get("content"), list)
            for part in message["content"]
            if part.get("type") == "image_url"
        ]
        try:
            image_bytes = [base64.b64decode(url.split(",", 1)[-1], validate=True) for url in images]
            for data in image_bytes:
                Image.open(io.BytesIO(data)).verify()
        except Exception as error:
            return _error(400, f"Error while processing image: {error}")
        key = image_key(image_bytes[0]) if image_bytes else "text-only"
        mode = self._next_mode(key)
        self.modes_served[mode] += 1
        budget = body.get("max_completion_tokens") or body.get("max_tokens")
        self.log.append((key, budget, mode))
        if mode == "400":  # the real server's messages can carry its own file paths
            return _error(
                400,
                "Error while processing image: scripted bad request in "
                "/opt/venv/lib/python3.11/site-packages/sglang/srt/managers/io_struct.py:812",
            )
        if self._slots is None:
            self._slots = [asyncio.Semaphore(self.config.capacity) for _ in self._load]
        if self.config.max_queued is not None and self._waiting >= self.config.max_queued:
            self.counters["rejected_503"] += 1
            return _error(503, "The request queue is full.", "503")
        if mode == "503":
            self.counters["rejected_503"] += 1
            return _error(503, "The request queue is full.", "503")
        server = min(range(len(self._load)), key=self._load.__getitem__)  # least loaded
        self._load[server] += 1
        self._waiting += 1
        try:
            await self._slots[server].acquire()
        except BaseException:
            self._load[server] -= 1
            raise
        finally:
            self._waiting -= 1
        self._running += 1
        started = time.monotonic()
        try:
            return await self._serve(body, mode, messages, image_bytes, grammar_spec, started)
        finally:
            self._running -= 1
            self._load[server] -= 1
            self.counters["busy_s"] += time.monotonic() - started
            self._slots[server].release()

    async def _serve(
        self,
        body: dict[str, Any],
        mode: str,
        messages: list[dict[str, Any]],
        image_bytes: list[bytes],
        grammar_spec: tuple[str, str] | None,
        started: float,
    ) -> Response:
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 1024)
        if grammar_spec is not None and grammar_spec[0] == "schema":
            self._answered += 1
            n = self._answered
            if self.config.vary_by == "image":
                seed = hashlib.sha256(b"".join(image_bytes) + grammar_spec[1].encode()).digest()
                n = int.from_bytes(seed[:4], "big")
            text = json.dumps(schema_answer(json.loads(grammar_spec[1]), n))
            return await self._answer(
                body, mode, text, "stop", 1000, 12, 100, len(image_bytes), started, max_tokens
            )
        prompt = await asyncio.to_thread(self._prompt, messages)
        length = await asyncio.to_thread(self._prompt_length, prompt, len(image_bytes))
        if length > self.config.context_length:  # the real server's message, word for word
            return _error(
                400,
                f"The input ({length} tokens) is longer than the model's context length "
                f"({self.config.context_length} tokens).",
            )
        text, finish, prompt_tokens, completion_tokens, tokens = await asyncio.to_thread(
            self._generate, image_bytes[0] if image_bytes else b"", prompt, grammar_spec, max_tokens
        )
        cached = await asyncio.to_thread(self._cached_tokens, prompt)
        return await self._answer(
            body, mode, text, finish, prompt_tokens, completion_tokens, cached,
            len(image_bytes), started, max_tokens, tokens,
        )  # fmt: skip

    async def _answer(
        self,
        body: dict[str, Any],
        mode: str,
        text: str,
        finish: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached: int,
        images: int,
        started: float,
        max_tokens: int = 1024,
        tokens: list[tuple[bytes, float]] | None = None,
    ) -> Response:
        """The chat completion as the real server words it, after the service time."""
        text, finish, completion_tokens = self._apply_mode(
            mode, text, finish, completion_tokens, max_tokens
        )
        logprobs = logprobs_content(text, tokens) if body.get("logprobs") else None
        remaining = self.config.service_time_s - (time.monotonic() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)
        if mode == "500":
            return _error(500, "Internal server error", "InternalServerError")
        if mode in OTHER_5XX:
            return _error(int(mode), OTHER_5XX[mode], "ServerError")
        self.counters["requests"] += 1
        self.counters["served"] += 1
        self.counters["prompt_tokens"] += prompt_tokens
        self.counters["completion_tokens"] += completion_tokens
        self.counters["cached_tokens"] += cached
        self.counters["last_hit_rate"] = cached / prompt_tokens if prompt_tokens else 0.0
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "reasoning_tokens": 0,
            "completion_tokens_details": None,
        }
        # As the real server: the details are null for a text-only prompt, and cached_tokens
        # is reported with or without --enable-cache-report.
        usage["prompt_tokens_details"] = (
            {"cached_tokens": cached, "image_tokens": IMAGE_TOKENS * images} if images else None
        )
        payload = {
            "id": uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "reasoning_content": None},
                    "logprobs": {"content": logprobs} if logprobs is not None else None,
                    "finish_reason": finish,
                    "matched_stop": None,
                }
            ],
            "usage": usage,
            "metadata": {
                "weight_version": "default",
                "weight_versions": {"start": "default", "end": "default", "version": "default"},
            },
        }
        if mode == "drop":
            self.counters["dropped"] += 1
            return _DroppingResponse(payload)
        return JSONResponse(payload)

    @staticmethod
    def _apply_mode(
        mode: str, text: str, finish: str, completion_tokens: int, max_tokens: int
    ) -> tuple[str, str, int]:
        if mode == "unclosed":
            return text[: max(1, len(text) // 2)], "length", max_tokens
        if mode == "whitespace":
            head = text.split(":", 1)[0] + ":"
            return head + "\n" * max(0, max_tokens - 4), "length", max_tokens
        if mode in ("extra_key", "bad_enum") and finish == "stop":
            try:
                decoded = json.loads(text)
            except ValueError:
                return text, finish, completion_tokens
            if mode == "extra_key":
                decoded["confidence"] = 0.9
            else:
                first = next(iter(decoded))
                decoded[first] = "purple_haze"
            return json.dumps(decoded, separators=(",", ":")), "stop", completion_tokens
        return text, finish, completion_tokens


class _DroppingResponse(Response):
    """Sends the response head, then fails: the client sees the connection close mid-body."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(content=json.dumps(payload), media_type="application/json")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"100000"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id":', "more_body": True})
        raise _DroppedConnection("fake: connection dropped")


_STANDIN: TransformersBackend | None = None


def standin_backend() -> TransformersBackend:
    """The tiny stand-in LLaVA (built once under data/models/, shared by every test)."""
    global _STANDIN
    if _STANDIN is None:
        from core.vlm.standin import STANDIN_MODEL_ID, ensure_standin
        from resources.model_cache import default_model_cache

        _STANDIN = TransformersBackend(
            ensure_standin(Path(default_model_cache())), model_id=STANDIN_MODEL_ID, threads=1
        )
    return _STANDIN


def main(argv: list[str] | None = None) -> None:
    """Serve a schema-answering fleet in this process until it is terminated (the benchmark's)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--servers", type=int, default=16)
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--service-time", type=float, default=1.5)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--vary-by",
        choices=["request", "image"],
        default="request",
        help="image: the same image and task always get the same answer",
    )
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args(argv)
    config = FakeSGLangConfig(
        model_path=FLEET_MODEL,
        answers="schema",
        servers=args.servers,
        capacity=args.capacity,
        service_time_s=args.service_time,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        seed=args.seed,
        vary_by=args.vary_by,
    )
    server = FakeSGLangServer(None, config)
    server.start()
    staging = args.port_file.with_suffix(".tmp")
    staging.write_text(str(server.port))
    staging.rename(args.port_file)
    assert server._thread is not None
    server._thread.join()


if __name__ == "__main__":
    main()
