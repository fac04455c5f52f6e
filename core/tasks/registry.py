"""Every built-in extraction task by name. Adding a task: one module with a `TASK`, one line here."""

from __future__ import annotations

from core.tasks import age_gender, basketball_action, scenery_people
from core.tasks.base import Task

TASKS: dict[str, Task] = {
    task.name: task for task in (scenery_people.TASK, age_gender.TASK, basketball_action.TASK)
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None


def get_tasks(names: list[str] | tuple[str, ...]) -> list[Task]:
    return [get_task(name) for name in names]
