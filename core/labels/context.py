"""Does each task's prompt plus its token budget fit the model's context? Checked before any
image is sent, once the context length is known (the in-process model's config; an SGLang
server's `/v1/models` `max_model_len`).

What is counted: the prompt as the model's own tokenizer cuts it (in process: the rendered chat
prompt; over HTTP: the system prompt and the instruction plus a margin for the chat template's
markers, `plain_prompt_tokens`), the image's tokens (an estimate the backend gives), and the
answer's budget times `budget_factor` (2 where a truncated answer is retried
with twice the budget). A task that cannot fit is a spec error naming the spec file, the task's
line and what to change (a smaller `max_completion_tokens`, fewer or shorter descriptions, or a
model with a longer context), the same form as every other spec error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from core.labels.loader import SpecError, SpecProblem, _compose, spec_path
from core.tasks.base import Task

TEMPLATE_MARGIN = 32  # tokens of the chat template's role markers and separators


def _task_line(file: Path, task: str) -> tuple[int | None, int | None]:
    try:
        doc = _compose(file.read_text(encoding="utf-8"))
    except OSError:
        return None, None
    tasks = (doc.data or {}).get("tasks") if isinstance(doc.data, dict) else None
    for index, item in enumerate(tasks or []):
        if isinstance(item, dict) and item.get("name") == task:
            return doc.marks.get(("tasks", index, "max_completion_tokens")) or doc.marks.get(
                ("tasks", index), (None, None)
            )
    return None, None


def plain_prompt_tokens(count_tokens: Callable[[str], int]) -> Callable[[Task], int]:
    """A task's prompt tokens without its chat template: system prompt, instruction, margin."""
    from core.vlm.prompt import SYSTEM_PROMPT

    return lambda task: (
        count_tokens(SYSTEM_PROMPT) + count_tokens(task.instruction) + TEMPLATE_MARGIN
    )


def context_problems(
    tasks: Iterable[Task],
    *,
    context_length: int,
    prompt_tokens: Callable[[Task], int],
    image_tokens: int = 0,
    budget_factor: float = 1,
    max_completion_tokens: int | None = None,
    model: str = "the model",
) -> list[SpecProblem]:
    """One problem per task whose prompt, image and answer budget exceed `context_length`."""
    file = spec_path()
    problems = []
    for task in tasks:
        prompt = prompt_tokens(task)
        own = max_completion_tokens or task.max_completion_tokens
        budget = int(own * budget_factor)
        needed = prompt + image_tokens + budget
        if needed > context_length:
            line, column = _task_line(file, task.name)
            retry = f" x {budget_factor:g} (the truncation retry)" if budget_factor > 1 else ""
            problems.append(
                SpecProblem(
                    line,
                    column,
                    f"task {task.name}",
                    f"does not fit {model}'s context of {context_length} tokens: prompt "
                    f"{prompt} + image {image_tokens} + answer budget "
                    f"{own}{retry} = {needed}; lower max_completion_tokens, "
                    "shorten the descriptions, or use a model with a longer context",
                )
            )
    return problems


def check_context(tasks: Iterable[Task], **kwargs) -> None:
    """`context_problems`, raised as a `SpecError` when there are any."""
    problems = context_problems(tasks, **kwargs)
    if problems:
        raise SpecError(str(spec_path()), problems)


def server_problems(
    base_url: str,
    tasks: Iterable[Task],
    *,
    api_key: str | None = None,
    budget_factor: float = 1,
    timeout_s: float = 10.0,
) -> list[SpecProblem] | None:
    """`context_problems` against an SGLang server: its `/v1/tokenize` renders each task's
    messages with the server's chat template, counts the tokens and reports `max_model_len`.
    The image's tokens are not counted here (the server's 400 for an oversized prompt covers
    them, as a failure row). None when the server does not answer the endpoint (a router, an
    older server): the context is then unknown and nothing is checked."""
    import httpx

    from core.vlm.prompt import SYSTEM_PROMPT

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    counts: dict[str, int] = {}
    context: int | None = None
    tasks = list(tasks)
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s) as http:
        for task in tasks:
            messages = [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": task.instruction},
            ]
            try:
                answer = http.post(
                    "/v1/tokenize", json={"messages": messages, "add_generation_prompt": True}
                )
            except httpx.HTTPError:
                return None
            if answer.status_code != 200:
                return None
            body = answer.json()
            counts[task.name] = int(body["count"])
            context = int(body["max_model_len"])
    if context is None:
        return []
    return context_problems(
        tasks,
        context_length=context,
        prompt_tokens=lambda task: counts[task.name],
        budget_factor=budget_factor,
        model=f"the server at {base_url}",
    )
