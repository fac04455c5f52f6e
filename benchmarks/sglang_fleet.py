"""A fleet of simulated SGLang servers behind one URL, for the client benchmark (its own process).

Why not the test double (`tests/fakes/sglang_server.py`): that one runs the stand-in model and
caches its answers, and it runs in the client's process. A benchmark of the client's CPU needs
a server that costs little CPU, runs elsewhere, and never caches. This one answers every request
afresh with a schema-valid JSON answer built from the request's own `response_format` (the
enum value rotates per request), after holding one of its `capacity` slots for `service_time_s`.

`--servers N` simulates N such servers behind one URL, as sglang-router does: each request is
sent to the server with the fewest running plus waiting requests (its load-aware policy); the
router hop itself is not a second HTTP request here. `GET /stats` reports the slot-seconds used,
the requests served and this process's CPU seconds, `POST /stats/reset` zeroes them.
Faults: `--error-rate` (503 "The request queue is full.") and `--drop-rate` (connection closed
mid-response). Request checks: JSON body, messages, a json_schema response format, and every
image a base64 `data:` URL whose JPEG/PNG header parses.
Usage: python benchmarks/sglang_fleet.py --servers 16 --capacity 8 --service-time 1.5 --port-file F
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io
import json
import random
import re
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, too

from core.tasks.registry import TASKS
from core.vlm.sglang_client import compact_ebnf

MODEL = "sim/llava-fleet"
WORDS = ("red", "dark blue", "white", "green", "light grey")


def answer(schema: dict[str, Any], n: int) -> Any:
    """A value valid for `schema`, different from request to request (never a cached answer)."""
    if "enum" in schema:
        return schema["enum"][n % len(schema["enum"])]
    kind = schema.get("type")
    if kind == "object":
        return {
            key: answer(sub, n + i) for i, (key, sub) in enumerate(schema["properties"].items())
        }
    if kind == "array":
        count = min(schema.get("maxItems", 2), n % 3)
        return [answer(schema["items"], n + i) for i in range(count)]
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


def _error(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return JSONResponse(body, status_code=status)


_SCHEMAS: dict[str, dict[str, Any]] = {}


def _schema_of_grammar(grammar: str) -> dict[str, Any] | None:
    """The built-in task schema whose compact grammar the client sent (the fleet answers from the
    schema, as a constrained model would), or None for a grammar of no built-in task."""
    if not _SCHEMAS:
        _SCHEMAS.update({compact_ebnf(t.schema_json): t.json_schema for t in TASKS.values()})
    return _SCHEMAS.get(grammar)


class _Dropped(Response):
    """Sends the head of a 200, then fails: the client sees the connection close mid-body."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"100000")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"id":', "more_body": True})
        raise ConnectionAbortedError("simulated dropped connection")


class Fleet:
    def __init__(self, servers: int, capacity: int, service_time_s: float, seed: int,
                 error_rate: float, drop_rate: float) -> None:  # fmt: skip
        self.capacity = capacity
        self.service_time_s = service_time_s
        self.error_rate, self.drop_rate = error_rate, drop_rate
        self.rng = random.Random(seed)
        self.slots = [asyncio.Semaphore(capacity) for _ in range(servers)]
        self.load = [0] * servers  # running + waiting, per server
        self.reset()

    def reset(self) -> None:
        self.served = self.rejected = self.dropped = self.counter = 0
        self.busy_s = 0.0
        self.cpu_at_reset = time.process_time()

    def stats(self) -> dict[str, Any]:
        return {
            "servers": len(self.slots),
            "capacity": self.capacity,
            "service_time_s": self.service_time_s,
            "served": self.served,
            "rejected_503": self.rejected,
            "dropped": self.dropped,
            "slot_busy_s": self.busy_s,
            "cpu_s": time.process_time() - self.cpu_at_reset,
        }

    async def chat(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as error:
            return _error(400, f"JSON decode error: {error}")
        messages = body.get("messages")
        spec = (body.get("response_format") or {}).get("json_schema") or {}
        if body.get("ebnf"):  # the client's default: a compact grammar made from a task schema
            spec = {"schema": _schema_of_grammar(body["ebnf"])}
        if not isinstance(messages, list) or spec.get("schema") is None:
            return _error(
                400, "messages and an ebnf of a built-in task or a json_schema are required"
            )
        try:
            for message in messages:
                for part in message.get("content") or []:
                    if isinstance(part, dict) and part.get("type") == "image_url":
                        head, _, data = part["image_url"]["url"].partition(",")
                        if not head.startswith("data:image/"):
                            raise ValueError("not a data URL")
                        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))):
                            pass  # the header parses: a real server could decode it
        except (ValueError, KeyError, binascii.Error, OSError) as error:
            return _error(400, f"Error while processing image: {error}")
        roll = self.rng.random()
        if roll < self.error_rate:
            self.rejected += 1
            return _error(503, "The request queue is full.", "ServiceUnavailableError")
        self.counter += 1
        n = self.counter
        text = json.dumps(answer(spec["schema"], n), separators=(",", ":"))
        server = min(range(len(self.load)), key=self.load.__getitem__)
        self.load[server] += 1
        try:
            async with self.slots[server]:
                started = time.monotonic()
                await asyncio.sleep(self.service_time_s)
                self.busy_s += time.monotonic() - started
        finally:
            self.load[server] -= 1
        self.served += 1
        if roll < self.error_rate + self.drop_rate:
            self.dropped += 1
            return _Dropped()
        payload = {
            "id": uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 12,
                "total_tokens": 1012,
                "prompt_tokens_details": {"cached_tokens": 100},
            },
        }
        return JSONResponse(payload)

    def app(self) -> Starlette:
        async def ready(request: Request) -> Response:
            return PlainTextResponse("ok")

        async def model_info(request: Request) -> Response:
            return JSONResponse({"model_path": MODEL, "served_model_name": MODEL})

        async def stats(request: Request) -> Response:
            return JSONResponse(self.stats())

        async def reset(request: Request) -> Response:
            self.reset()
            return JSONResponse(self.stats())

        return Starlette(
            routes=[
                Route("/ready", ready),
                Route("/model_info", model_info),
                Route("/get_model_info", model_info),
                Route("/stats", stats),
                Route("/stats/reset", reset, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=16)
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--service-time", type=float, default=1.5)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))

    async def serve() -> None:
        fleet = Fleet(args.servers, args.capacity, args.service_time, args.seed,
                      args.error_rate, args.drop_rate)  # fmt: skip
        config = uvicorn.Config(
            fleet.app(), log_level="critical", access_log=False, timeout_keep_alive=60,
            backlog=2048,
        )  # fmt: skip
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(sock.getsockname()[1]))
        tmp.rename(args.port_file)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
