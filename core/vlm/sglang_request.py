"""What the SGLang client sends and how it reads errors: the image bytes, the per-request EBNF
grammar made from a task's JSON schema, the chat request body, and server messages fit for a row.

Pure functions, shared by the client (`core/vlm/sglang_client.py`), its tests and benchmarks.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import httpx

from core.tasks.base import Task
from core.vlm.prepare import jpeg_payload
from core.vlm.prompt import DEFAULT_LAYOUT, Layout, chat_messages

MAX_ERROR_CHARS = 400
# Server-side file paths (tracebacks, pydantic dumps): not for users, and they leak the layout.
_SERVER_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.+@-]+){2,}/?")


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


@lru_cache(maxsize=64)
def compact_ebnf(schema_json: str) -> str:
    """The task's JSON schema as an EBNF grammar with no free whitespace (`,` and `:` only).

    xgrammar (SGLang's default grammar backend) writes it; SGLang compiles the `ebnf` field of a
    chat request with the same library, and caches compiled grammars by their text.
    """
    import xgrammar

    grammar = xgrammar.Grammar.from_json_schema(
        schema_json, any_whitespace=False, separators=(",", ":"), strict_mode=True
    )
    return str(grammar)


def request_body(
    task: Task,
    image_url: str,
    model: str,
    max_tokens: int,
    constraint: Literal["ebnf", "json_schema"] = "ebnf",
    layout: Layout = DEFAULT_LAYOUT,
    logprobs: bool = True,
) -> dict[str, Any]:
    """The chat request of one image and task. `logprobs`: the generated tokens' logprobs come
    back with the answer (`core/vlm/confidence.py` turns them into per-field confidence)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(task, image_url, layout),
        "temperature": 0,
        "max_completion_tokens": max_tokens,
    }
    if logprobs:
        body["logprobs"] = True
    if constraint == "ebnf":
        body["ebnf"] = compact_ebnf(task.schema_json)
    else:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": task.name, "schema": task.json_schema, "strict": True},
        }
    return body


def trim_server_message(message: str) -> str:
    """A server error message fit for a row: file paths replaced, bounded length."""
    text = _SERVER_PATH.sub("<path>", message)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def error_text(response: httpx.Response) -> str:
    """An error answer as `HTTP <status>: <server message>`, trimmed for a row."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {trim_server_message(response.text[:300])}"
    message = body.get("message") if isinstance(body, dict) else None
    if message is None and isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error
    return f"HTTP {response.status_code}: {trim_server_message(str(message or body))}"
