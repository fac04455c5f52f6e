"""Apparent age bin and gender of the main person in the picture."""

from __future__ import annotations

from pydantic import Field

from core.tasks.base import Task, TaskModel
from core.tasks.vocabulary import AgeBin, Gender


class AgeGender(TaskModel):
    age_group: AgeBin = Field(description="apparent age in years of the most prominent person")
    gender: Gender = Field(description="apparent gender of the same person")


TASK = Task(
    name="age_gender",
    goal="Look at the most prominent person in the image.",
    model=AgeGender,
    max_completion_tokens=64,
)
