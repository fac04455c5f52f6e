"""The seed's task: the scene's light/setting and every visible person's age group and shirt."""

from __future__ import annotations

from pydantic import Field

from core.tasks.base import Task, TaskModel
from core.tasks.vocabulary import AgeBin, Scenery


class Person(TaskModel):
    age_group: AgeBin = Field(description="the person's apparent age in years")
    shirt_color: str = Field(
        pattern=r"^[a-z][a-z -]{0,19}$",
        description="colour of the shirt or top in plain lower-case words, e.g. dark blue",
    )


class SceneryPeople(TaskModel):
    scenery: Scenery = Field(description="the setting and light of the whole picture")
    people: list[Person] = Field(
        max_length=8, description="the most prominent people, largest first; [] if none"
    )


TASK = Task(
    name="scenery_people",
    goal="Describe the scenery of the image and the people in it.",
    model=SceneryPeople,
    max_completion_tokens=384,
)
