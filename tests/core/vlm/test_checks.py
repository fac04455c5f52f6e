"""The `vlm_extractions` checks pass on good data and fail on bad data planted in a real DuckDB file."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from core.quality.outcome import CheckOutcome
from core.tasks.registry import get_task
from core.vlm import checks
from core.vlm.checks import ExtractionScope
from core.warehouse import Warehouse
from tests.fixtures import user_spec
from tests.fixtures.contracts import add_drop, add_extraction, plant_sql

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
VLM = "standin-llava"
SCOPE = ExtractionScope(task="scenery_people", model_id=VLM)
SCENERY_PEOPLE = get_task("scenery_people")


@pytest.fixture
def wh(warehouse: Warehouse) -> Warehouse:
    warehouse.ensure_schema()
    return warehouse


def by_name(outcomes: list[CheckOutcome]) -> dict[str, CheckOutcome]:
    return {outcome.check_name: outcome for outcome in outcomes}


PERSON = {"age_group": "21-30", "shirt_color": "red"}


def test_extraction_checks_pass_on_complete_valid_rows(wh):
    ids = add_drop(wh, "d1", ["a", "b"], at=T0)
    add_extraction(
        wh, ids[0], "scenery_people", VLM, "ok", {"scenery": "indoors", "people": [PERSON]}
    )
    add_extraction(wh, ids[1], "scenery_people", VLM, "ok", {"scenery": "cloudy", "people": []})
    outcomes = checks.extraction_checks(wh, "d1", SCOPE, SCENERY_PEOPLE.model)
    assert [o.check_name for o in outcomes if not o.passed] == []
    assert by_name(outcomes)[checks.EXTRACTION_VALIDITY].value == 1.0


def test_coverage_fails_on_an_image_without_any_result_row(wh):
    ids = add_drop(wh, "d1", ["a", "b"], at=T0)
    add_extraction(wh, ids[0], "scenery_people", VLM, "error")  # a failure row still counts
    outcome = checks.extraction_coverage(wh, "d1", SCOPE)
    assert not outcome.passed and outcome.value == 0.5
    assert outcome.offending == [{"image_id": ids[1], "path": "d1/b.jpg"}]
    scoped = ExtractionScope(task="scenery_people", model_id=VLM, task_fingerprint="other")
    assert checks.extraction_coverage(wh, "d1", scoped).counts["covered"] == 0


def test_validity_rate_errors_below_one_bound_and_warns_below_the_other(wh):
    ids = add_drop(wh, "d1", [str(i) for i in range(10)], at=T0)
    for i, iid in enumerate(ids):
        status = "ok" if i < 7 else ("truncated" if i < 9 else "invalid")
        add_extraction(wh, iid, "scenery_people", VLM, status, {"scenery": "indoors", "people": []})
    warn = checks.extraction_validity(wh, "d1", SCOPE, error_below=0.5, warn_below=0.9)
    assert (warn.passed, warn.severity, warn.value, warn.threshold) == (False, "WARN", 0.7, 0.9)
    assert {row["status"] for row in warn.offending} == {"truncated", "invalid"}
    error = checks.extraction_validity(wh, "d1", SCOPE, error_below=0.8, warn_below=0.9)
    assert (error.passed, error.severity) == (False, "ERROR")
    assert checks.extraction_validity(wh, "d1", SCOPE, error_below=0.5, warn_below=0.7).passed
    truncation = checks.extraction_truncation(wh, "d1", SCOPE, max_rate=0.1)
    assert not truncation.passed and truncation.value == pytest.approx(0.2)
    assert checks.extraction_truncation(wh, "d1", SCOPE, max_rate=0.2).passed


def test_a_later_retry_supersedes_an_earlier_failure(wh):
    (iid,) = add_drop(wh, "d1", ["a"], at=T0)
    older = dataclasses.replace(SCENERY_PEOPLE, goal="An older wording of the task.")
    add_extraction(wh, iid, older, VLM, "truncated")  # an earlier task version failed
    add_extraction(wh, iid, SCENERY_PEOPLE, VLM, "error")  # the current one failed once ...
    add_extraction(wh, iid, SCENERY_PEOPLE, VLM, "ok", {"scenery": "indoors", "people": []})
    assert wh.rows("SELECT count(*) FROM vlm_extractions") == [(2,)]  # ... and was replaced
    assert checks.extraction_validity(wh, "d1", SCOPE).value == 1.0
    current = SCOPE.model_copy(update={"task_fingerprint": SCENERY_PEOPLE.fingerprint})
    assert checks.extraction_truncation(wh, "d1", current).counts == {"images": 1, "ok": 1}


def test_values_outside_the_schema_enums_and_too_many_people_fail(wh):
    ids = add_drop(wh, "d1", ["a", "b"], at=T0)
    add_extraction(
        wh, ids[0], "scenery_people", VLM, "ok", {"scenery": "indoors", "people": [PERSON]}
    )
    add_extraction(
        wh, ids[1], "scenery_people", VLM, "ok", {"scenery": "indoors", "people": [PERSON] * 8}
    )
    assert checks.extraction_enums(
        wh, "d1", SCOPE, checks.task_constraints("scenery_people", SCENERY_PEOPLE.model)
    ).passed
    plant_sql(
        wh, "UPDATE task_scenery_people SET scenery = 'underwater' WHERE image_id = ?", [ids[0]]
    )
    plant_sql(
        wh, "UPDATE task_scenery_people__people SET age_group = '99+' WHERE image_id = ?", [ids[0]]
    )
    plant_sql(  # a ninth person: the schema allows at most eight
        wh,
        "INSERT INTO task_scenery_people__people SELECT image_id, model_id, task_fingerprint, 8,"
        " age_group, shirt_color FROM task_scenery_people__people WHERE image_id = ? AND idx = 0",
        [ids[1]],
    )
    constraints = checks.task_constraints("scenery_people", SCENERY_PEOPLE.model)
    assert constraints.entity_bounds == {"task_scenery_people__people": (0, 8)}
    assert constraints.enums["task_scenery_people__people"]["age_group"][0] == "18-20"
    enums = checks.extraction_enums(wh, "d1", SCOPE, constraints)
    assert not enums.passed
    assert {(row["table"], row["column"], row["value"]) for row in enums.offending} == {
        ("task_scenery_people", "scenery", "underwater"),
        ("task_scenery_people__people", "age_group", "99+"),
    }
    counts = checks.extraction_entity_counts(wh, "d1", SCOPE, constraints)
    assert not counts.passed
    assert counts.offending == [
        {"table": "task_scenery_people__people", "image_id": ids[1], "entities": 9}
    ]


def test_every_element_of_a_multi_label_column_is_checked_against_the_field_values(wh):
    """A `multi_choice` field is a VARCHAR[] column: each element must be one of its values."""
    task = user_spec.TASKS["product"]
    scope = ExtractionScope(task="product", model_id=VLM)
    ids = add_drop(wh, "d1", ["a", "b"], at=T0)
    add_extraction(wh, ids[0], task, VLM, "ok", user_spec.product(attributes=["leather", "red"]))
    add_extraction(wh, ids[1], task, VLM, "ok", user_spec.product(attributes=["worn"]))
    constraints = checks.task_constraints("product", task.model)
    assert constraints.enums["task_product"]["attributes"] == ["leather", "red", "worn"]
    assert checks.extraction_enums(wh, "d1", scope, constraints).passed
    plant_sql(  # the second element is outside the field's values
        wh,
        "UPDATE task_product SET attributes = ['leather', 'purple'] WHERE image_id = ?",
        [ids[0]],
    )
    enums = checks.extraction_enums(wh, "d1", scope, constraints)
    assert not enums.passed
    assert enums.offending == [
        {"table": "task_product", "column": "attributes", "image_id": ids[0], "value": "purple"}
    ]
    assert enums.counts["outside_enum"] == 1
