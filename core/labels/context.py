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
    budget_factor: int = 1,
    max_completion_tokens: int | None = None,
    model: str = "the model",
) -> list[SpecProblem]:
    """One problem per task whose prompt, image and answer budget exceed `context_length`."""
    file = spec_path()
    problems = []
    for task in tasks:
        prompt = prompt_tokens(task)
        budget = (max_completion_tokens or task.max_completion_tokens) * budget_factor
        needed = prompt + image_tokens + budget
        if needed > context_length:
            line, column = _task_line(file, task.name)
            retry = f" x {budget_factor} (the truncation retry)" if budget_factor > 1 else ""
            problems.append(
                SpecProblem(
                    line,
                    column,
                    f"task {task.name}",
                    f"does not fit {model}'s context of {context_length} tokens: prompt "
                    f"{prompt} + image {image_tokens} + answer budget "
                    f"{budget // budget_factor}{retry} = {needed}; lower max_completion_tokens, "
                    "shorten the descriptions, or use a model with a longer context",
                )
            )
    return problems


def check_context(tasks: Iterable[Task], **kwargs) -> None:
    """`context_problems`, raised as a `SpecError` when there are any."""
    problems = context_problems(tasks, **kwargs)
    if problems:
        raise SpecError(str(spec_path()), problems)
