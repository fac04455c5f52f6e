"""Model guards fail on what a model gets wrong in schema-valid rows, and pass on good answers."""

from __future__ import annotations

import datetime as dt

import pytest

from core.labels.loader import default_spec
from core.tasks.registry import get_task
from core.vlm import guards
from core.vlm.checks import ExtractionScope
from core.warehouse import Warehouse
from tests.fixtures.contracts import add_drop, add_extraction, plant_sql

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
VLM = "standin-llava"
SCENERY_PEOPLE = get_task("scenery_people")
AGE_GENDER = get_task("age_gender")
SCOPE = ExtractionScope(
    task="scenery_people", model_id=VLM, task_fingerprint=SCENERY_PEOPLE.fingerprint
)
PEOPLE_CHECK = "extraction_people_consistency"  # the bundled rule keeps its check name
SCENES = ["indoors", "cloudy", "blue_sky", "golden_hour", "night_time"]


@pytest.fixture
def wh(warehouse: Warehouse) -> Warehouse:
    warehouse.ensure_schema()
    return warehouse


def person(age: str = "21-30", shirt: str = "red") -> dict[str, str]:
    return {"age_group": age, "shirt_color": shirt}


def scenery_drop(wh: Warehouse, n: int, scene_of, people_of) -> list[str]:
    ids = add_drop(wh, "d1", [f"img{i}" for i in range(n)], at=T0)
    for i, iid in enumerate(ids):
        parsed = {"scenery": scene_of(i), "people": people_of(i)}
        add_extraction(wh, iid, SCENERY_PEOPLE, VLM, "ok", parsed)
    return ids


def test_constant_answers_warn_when_every_image_of_a_large_drop_gets_one_answer(wh):
    scenery_drop(wh, 10, lambda i: "indoors", lambda i: [person(shirt=["red", "blue"][i % 2])])
    outcome = guards.constant_answers(wh, "d1", SCOPE, SCENERY_PEOPLE, min_images=10)
    assert not outcome.passed and outcome.severity == "WARN"
    assert {(row["column"], row["value"]) for row in outcome.offending} == {
        ("scenery", "indoors"),
        ("age_group", "21-30"),
    }
    assert outcome.counts == {"fields_checked": 3, "constant_fields": 2}


def test_constant_answers_pass_on_varied_answers_and_on_a_drop_too_small_to_judge(wh):
    scenery_drop(
        wh,
        10,
        lambda i: SCENES[i % 5],
        lambda i: [person(age=["18-20", "31-40"][i % 2], shirt=["red", "blue"][i % 2])],
    )
    assert guards.constant_answers(wh, "d1", SCOPE, SCENERY_PEOPLE, min_images=10).passed
    small = guards.constant_answers(wh, "d1", SCOPE, SCENERY_PEOPLE, min_images=11)
    assert small.passed and small.counts["fields_checked"] == 0


def test_refusals_in_free_text_and_in_failed_results_warn(wh):
    ids = scenery_drop(wh, 3, lambda i: "indoors", lambda i: [person(shirt="dark blue")])
    assert guards.refusals(wh, "d1", SCOPE, SCENERY_PEOPLE).passed  # enums are never judged
    plant_sql(  # schema-valid (lower-case words) but no answer
        wh,
        "UPDATE task_scenery_people__people SET shirt_color = 'unknown' WHERE image_id = ?",
        [ids[0]],
    )
    plant_sql(  # an empty string, should a schema ever allow one
        wh,
        "UPDATE task_scenery_people__people SET shirt_color = '  ' WHERE image_id = ?",
        [ids[1]],
    )
    plant_sql(  # the latest result of the third image: the model refused
        wh,
        "UPDATE vlm_extractions SET status = 'invalid',"
        " raw_text = 'I''m sorry, I can''t help with identifying people.' WHERE image_id = ?",
        [ids[2]],
    )
    outcome = guards.refusals(wh, "d1", SCOPE, SCENERY_PEOPLE)
    assert not outcome.passed and outcome.severity == "WARN"
    assert {(row["column"], row["image_id"]) for row in outcome.offending} == {
        ("shirt_color", ids[0]),
        ("shirt_color", ids[1]),
        ("raw_text", ids[2]),
    }
    assert outcome.counts == {"text_answers": 3, "non_answers": 2, "refused_results": 1}


def _grammar_accepts(task, text: str) -> bool:
    """Whether the task's constrained decoding (the grammar every request carries) can end in
    `text`: xgrammar, as SGLang and the transformers backend use it."""
    import xgrammar
    from xgrammar.testing import _is_grammar_accept_string

    from core.vlm.sglang_request import compact_ebnf

    grammar = xgrammar.Grammar.from_ebnf(compact_ebnf(task.schema_json))
    return _is_grammar_accept_string(grammar, text)


def test_refusals_show_inside_the_constrained_json_of_failed_results(wh):
    """Constrained decoding never writes prose: a refusal shows as a string value of the JSON,
    in a result that failed (cut at the token limit, or invalid), where no typed row holds it."""
    ids = scenery_drop(wh, 4, lambda i: "indoors", lambda i: [person(shirt="dark blue")])
    cut = '{"scenery":"indoors","people":[{"age_group":"21-30","shirt_color":"i cannot tell wh'
    refused = '{"scenery":"indoors","people":[{"age_group":"21-30","shirt_color":"sorry"}]}'
    prose = "I'm sorry, I can't help with identifying people."
    assert _grammar_accepts(SCENERY_PEOPLE, cut + 'o"}]}')  # a prefix decoding can produce
    assert _grammar_accepts(SCENERY_PEOPLE, refused)
    assert not _grammar_accepts(SCENERY_PEOPLE, prose)  # what the guard used to look for
    fine = '{"scenery":"indoors","people":[{"age_group":"21-30","shirt_color":"navy'
    for iid, status, raw in (
        (ids[0], "truncated", cut),
        (ids[1], "invalid", refused),
        (ids[2], "truncated", fine),
    ):
        plant_sql(
            wh,
            "UPDATE vlm_extractions SET status = ?, raw_text = ? WHERE image_id = ?",
            [status, raw, iid],
        )
    outcome = guards.refusals(wh, "d1", SCOPE, SCENERY_PEOPLE)
    assert not outcome.passed
    assert {(row["column"], row["image_id"]) for row in outcome.offending} == {
        ("raw_text", ids[0]),
        ("raw_text", ids[1]),
    }
    assert outcome.counts["refused_results"] == 2


def test_people_consistency_warns_when_a_person_is_described_but_nobody_listed(wh):
    ids = scenery_drop(wh, 4, lambda i: "indoors", lambda i: [person()] if i < 3 else [])
    for iid in ids:
        add_extraction(wh, iid, AGE_GENDER, VLM, "ok", {"age_group": "21-30", "gender": "male"})
    rule = default_spec().consistency[0]  # the bundled spec's people rule, max_share 0.25
    good = guards.consistency(wh, "d1", VLM, rule, AGE_GENDER, SCENERY_PEOPLE, min_images=4)
    assert good.check_name == PEOPLE_CHECK
    assert good.passed and good.value == 0.25
    plant_sql(wh, "DELETE FROM task_scenery_people__people WHERE image_id = ?", [ids[0]])
    bad = guards.consistency(wh, "d1", VLM, rule, AGE_GENDER, SCENERY_PEOPLE, min_images=4)
    assert not bad.passed and bad.value == 0.5
    assert {row["image_id"] for row in bad.offending} == {ids[0], ids[3]}
    assert bad.counts == {"images_compared": 4, "answered_but_none_listed": 2}


def test_guard_checks_run_per_task_and_compare_people_only_when_both_tasks_ran(wh):
    scenery_drop(wh, 2, lambda i: "indoors", lambda i: [])
    alone = guards.guard_checks(wh, "d1", VLM, [SCENERY_PEOPLE])
    names = [outcome.check_name for outcome in alone["scenery_people"]]
    assert names == [
        guards.EXTRACTION_CONSTANT_ANSWERS,
        guards.EXTRACTION_REFUSALS,
        PEOPLE_CHECK,
    ]
    assert "nothing compared" in alone["scenery_people"][-1].summary
    both = guards.guard_checks(wh, "d1", VLM, [SCENERY_PEOPLE, AGE_GENDER])
    assert [o.check_name for o in both["age_gender"]][-1] == PEOPLE_CHECK


def test_a_spec_without_consistency_rules_has_no_consistency_guard(wh):
    scenery_drop(wh, 2, lambda i: "indoors", lambda i: [])
    spec = default_spec().model_copy(update={"consistency": ()})
    assert guards.consistency_check_names(spec.consistency) == []
    out = guards.guard_checks(wh, "d1", VLM, [SCENERY_PEOPLE, AGE_GENDER], rules=spec.consistency)
    names = {o.check_name for outcomes in out.values() for o in outcomes}
    assert names == {guards.EXTRACTION_CONSTANT_ANSWERS, guards.EXTRACTION_REFUSALS}
