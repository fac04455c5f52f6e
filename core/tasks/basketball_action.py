"""Classification-style task: what the player with the ball is doing."""

from __future__ import annotations

from pydantic import Field

from core.tasks.base import Task, TaskModel
from core.tasks.vocabulary import BasketballAction


class BasketballActionLabel(TaskModel):
    action: BasketballAction = Field(description="what the player with the ball is doing")


TASK = Task(
    name="basketball_action",
    goal="This is a basketball photo. Classify the action of the player with the ball.",
    model=BasketballActionLabel,
    max_completion_tokens=48,
)
