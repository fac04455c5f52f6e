"""The prompt layout, shared by both backends: instruction first, image last.

SGLang's radix cache shares KV for the longest common token prefix of requests. Image tokens are
hashed from the pixels, so the tree branches at the first image; with the instruction *before*
the image every request of a task shares the system prompt and the whole instruction, and only
the image and the answer are new work. With the image first only the system prompt would be
shared. LLaVA was mostly trained image-first; instruction-first is well inside what the chat
models handle, and the evaluation asset is where a drop in quality would show.
"""

from __future__ import annotations

from typing import Any

from core.tasks.base import Task

SYSTEM_PROMPT = "You label photographs. You answer with JSON only."


def chat_messages(task: Task, image_url: str | None = None) -> list[dict[str, Any]]:
    """OpenAI-style messages; with `image_url` None, a transformers `{"type": "image"}` part."""
    image_part: dict[str, Any] = (
        {"type": "image_url", "image_url": {"url": image_url}}
        if image_url is not None
        else {"type": "image"}
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "text", "text": task.instruction}, image_part]},
    ]
