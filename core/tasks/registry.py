"""Every extraction task by name, built from the labeling spec (`IMAGE_PIPELINE_LABELS`, default
`labels/default.yaml`). Adding a task: a few lines of the spec, no code."""

from __future__ import annotations

from core.labels.derive import build_tasks
from core.labels.loader import current_spec
from core.tasks.base import Task

TASKS: dict[str, Task] = build_tasks(current_spec())


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None


def get_tasks(names: list[str] | tuple[str, ...]) -> list[Task]:
    return [get_task(name) for name in names]
