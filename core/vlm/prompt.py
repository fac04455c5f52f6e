"""The prompt layout, shared by both backends: image first, then the task's instruction.

SGLang's radix cache shares KV for the longest common token prefix of requests; image tokens are
derived from a hash of the pixels, so a prefix can run through an image only when the same image
is at the same place. What costs the most is the image: a 1536x1152 photo is about 2,250 vision
tokens for Qwen2-VL, against 80-250 tokens of instruction. With the image *first*, every task of
one image shares the system prompt and the whole image: once the image's first task has been
prefilled, its other tasks compute only their own instruction and the vision encoder does not
run again. Instruction first (the old layout) shared the system prompt and the instruction across
images, which saves little, and recomputed the image (and ran its vision encoder) for every task.
`benchmarks/prefill.py` measures both on the real server; docs/extraction.md has the numbers.

The layout is not part of a task's fingerprint: the text sent is the same, only its order with
the image changes (see docs/extraction.md, "Prompt layout").
"""

from __future__ import annotations

from typing import Any, Literal

from core.tasks.base import Task

SYSTEM_PROMPT = "You label photographs. You answer with JSON only."

Layout = Literal["image_first", "instruction_first"]
DEFAULT_LAYOUT: Layout = "image_first"


def chat_messages(
    task: Task, image_url: str | None = None, layout: Layout = DEFAULT_LAYOUT
) -> list[dict[str, Any]]:
    """OpenAI-style messages; with `image_url` None, a transformers `{"type": "image"}` part."""
    image_part: dict[str, Any] = (
        {"type": "image_url", "image_url": {"url": image_url}}
        if image_url is not None
        else {"type": "image"}
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_content(task.instruction, image_part, layout)},
    ]


def user_content(instruction: str, image_part: Any, layout: Layout = DEFAULT_LAYOUT) -> list[Any]:
    """The user turn's parts in the layout's order (exports render training data from it)."""
    text_part = {"type": "text", "text": instruction}
    return [image_part, text_part] if layout == "image_first" else [text_part, image_part]
