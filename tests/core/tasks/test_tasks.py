"""Each task yields a prompt, a bounded JSON schema, validation and typed tables from one model."""

from __future__ import annotations

import json

import pytest
from pydantic import Field

from core.tasks.base import Task, TaskModel, TaskOutputError
from core.tasks.registry import TASKS, get_task
from tests.fixtures.vocabulary import AGE_BINS, BASKETBALL_ACTIONS, GENDERS, SCENERY


def test_the_three_tasks_are_registered():
    assert set(TASKS) == {"scenery_people", "age_gender", "basketball_action"}
    with pytest.raises(KeyError, match="known: age_gender"):
        get_task("nope")


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("scenery_people", SCENERY + AGE_BINS),
        ("age_gender", AGE_BINS + GENDERS),
        ("basketball_action", BASKETBALL_ACTIONS),
    ],
)
def test_prompt_names_every_field_and_allowed_value(name, values):
    task = get_task(name)
    for field in task.json_schema["properties"]:
        assert f"- {field}:" in task.instruction
    for value in values:
        assert json.dumps(value) in task.instruction


def test_scenery_people_schema_is_closed_bounded_and_xgrammar_compatible():
    schema = get_task("scenery_people").json_schema
    assert "$defs" not in json.dumps(schema) and "$ref" not in json.dumps(schema)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["scenery", "people"]
    assert schema["properties"]["scenery"]["enum"] == list(SCENERY)
    people = schema["properties"]["people"]
    assert people["maxItems"] == 8
    colour = people["items"]["properties"]["shirt_color"]
    assert colour["pattern"] == "^[a-z][a-z -]{0,19}$"
    assert "maxLength" not in colour and "minLength" not in colour  # xgrammar rejects the mix
    assert people["items"]["additionalProperties"] is False


def test_validation_rejects_extra_keys_values_outside_enums_and_broken_json():
    task = get_task("scenery_people")
    ok = task.parse('{"scenery":"cloudy","people":[{"age_group":"21-30","shirt_color":"red"}]}')
    assert ok.model_dump()["people"][0]["shirt_color"] == "red"
    with pytest.raises(TaskOutputError, match="Extra inputs"):
        task.parse('{"scenery":"cloudy","people":[],"confidence":0.9}')
    with pytest.raises(TaskOutputError, match="scenery"):
        task.parse('{"scenery":"purple_haze","people":[]}')
    with pytest.raises(TaskOutputError, match="not valid JSON"):
        task.parse('{"scenery":"cloudy","peop')
    with pytest.raises(TaskOutputError, match="shirt_color"):
        task.parse('{"scenery":"cloudy","people":[{"age_group":"21-30","shirt_color":"Red\\n"}]}')


def test_scalars_become_columns_and_lists_child_rows():
    task = get_task("scenery_people")
    assert task.tables.table == "task_scenery_people"
    assert task.tables.columns == (("scenery", "VARCHAR"),)
    (child,) = task.tables.children
    assert child.table == "task_scenery_people__people"
    assert child.columns == (("age_group", "VARCHAR"), ("shirt_color", "VARCHAR"))
    parsed = {
        "scenery": "night_time",
        "people": [
            {"age_group": "18-20", "shirt_color": "blue"},
            {"age_group": "51-60", "shirt_color": "dark green"},
        ],
    }
    rows = task.rows("img", "m", parsed)
    fp = task.fingerprint
    assert rows["task_scenery_people"] == [("img", "m", fp, "night_time")]
    assert rows["task_scenery_people__people"] == [
        ("img", "m", fp, 0, "18-20", "blue"),
        ("img", "m", fp, 1, "51-60", "dark green"),
    ]


def test_classification_tasks_have_only_scalar_tables():
    for name in ("age_gender", "basketball_action"):
        assert get_task(name).tables.children == ()
    # no key: the lake has none; the writer deletes an answer's rows before it inserts them
    assert get_task("basketball_action").tables.ddl() == [
        'CREATE TABLE IF NOT EXISTS "task_basketball_action" ("image_id" VARCHAR, '
        '"model_id" VARCHAR, "task_fingerprint" VARCHAR, "action" VARCHAR)'
    ]


class _Free(TaskModel):
    note: str = Field(max_length=20)


class _Unbounded(TaskModel):
    note: str = Field(pattern=r"^[a-z]+$")


class _Both(TaskModel):
    note: str = Field(pattern=r"^[a-z]{1,5}$", max_length=5)


class _Colour(TaskModel):
    colour: str = Field(pattern=r"^[a-z]{1,5}$")


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (_Free, "bounded `pattern`"),
        (_Unbounded, "unbounded quantifier"),
        (_Both, "pattern` combined"),
    ],
)
def test_unbounded_or_xgrammar_incompatible_strings_are_refused(model, reason):
    with pytest.raises(TypeError, match=reason):
        Task(name="bad", goal="x", model=model)


def test_fingerprint_changes_with_the_instruction_or_the_schema():
    a = Task(name="colour", goal="Name the colour.", model=_Colour)
    b = Task(name="colour", goal="Name the main colour.", model=_Colour)
    assert a.fingerprint == Task(name="colour", goal="Name the colour.", model=_Colour).fingerprint
    assert a.fingerprint != b.fingerprint
    assert len(a.fingerprint) == 16
