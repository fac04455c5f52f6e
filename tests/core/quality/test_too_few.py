"""Checks with a minimum say "skipped: too few images (n of m needed)" when a drop is below it:
never a pass over 0 images nor a warning on one image (issue 20, item 6)."""

from __future__ import annotations

import datetime as dt

import pytest

from core.clip import checks as clip_checks
from core.labels.loader import default_spec
from core.quality import cross_stage
from core.quality.cross_stage import LabelSource
from core.quality.outcome import CheckOutcome, merge_outcomes
from core.tasks.label_sets import LABEL_SETS
from core.tasks.registry import get_task
from core.vlm import guards
from core.vlm.checks import ExtractionScope
from core.warehouse import Warehouse
from tests.fixtures.contracts import add_drop, add_extraction, add_zero_shot

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CLIP = "standin-clip"
VLM = "standin-llava"
SCENERY_PEOPLE = get_task("scenery_people")
AGE_GENDER = get_task("age_gender")


@pytest.fixture
def wh(warehouse: Warehouse) -> Warehouse:
    warehouse.ensure_schema()
    return warehouse


def assert_skipped(outcome: CheckOutcome, text: str) -> None:
    assert outcome.summary.startswith(f"skipped: {text}"), outcome.summary
    assert outcome.passed and outcome.skipped == text and outcome.value is None


def one_image_drop(wh: Warehouse) -> str:
    (iid,) = add_drop(wh, "d1", ["only"], at=T0)
    add_zero_shot(wh, iid, CLIP, "scenery", {"indoors": 0.9, "cloudy": 0.1})
    # a person described but nobody listed: one image of it is no evidence of anything
    add_extraction(wh, iid, SCENERY_PEOPLE, VLM, "ok", {"scenery": "indoors", "people": []})
    add_extraction(wh, iid, AGE_GENDER, VLM, "ok", {"age_group": "21-30", "gender": "male"})
    return iid


def test_zero_shot_collapse_on_one_image_is_skipped(wh):
    one_image_drop(wh)
    outcome = clip_checks.zero_shot_collapse(
        wh, "d1", CLIP, "scenery", fingerprint=LABEL_SETS["scenery"].fingerprint
    )
    assert_skipped(outcome, "too few images (1 of 10 needed)")
    assert outcome.counts == {"images": 1, "distinct_top_labels": 1}


def test_constant_answers_and_people_consistency_on_one_image_are_skipped(wh):
    one_image_drop(wh)
    scope = ExtractionScope(
        task="scenery_people", model_id=VLM, task_fingerprint=SCENERY_PEOPLE.fingerprint
    )
    constant = guards.constant_answers(wh, "d1", scope, SCENERY_PEOPLE)
    assert_skipped(constant, "too few images (1 of 10 needed)")
    rule = default_spec().consistency[0]  # the bundled spec's people rule
    people = guards.consistency(wh, "d1", VLM, rule, AGE_GENDER, SCENERY_PEOPLE)
    assert_skipped(people, "too few images (1 of 10 needed)")
    assert people.counts == {"images_compared": 1, "answered_but_none_listed": 1}
    # the guards asset path passes its minimum down to both
    folded = merge_outcomes(
        guards.guard_checks(wh, "d1", VLM, [SCENERY_PEOPLE, AGE_GENDER], min_images=2), "task"
    )
    by_name = {o.check_name: o for o in folded}
    assert by_name[guards.consistency_check_name(rule)].skipped == "too few images (1 of 2 needed)"
    assert by_name[guards.EXTRACTION_CONSTANT_ANSWERS].summary == (
        "skipped: too few images (1 of 2 needed) for scenery_people, age_gender"
    )


def test_label_drift_without_enough_images_on_either_side_is_skipped(wh):
    source = LabelSource.zero_shot("scenery", CLIP)
    one_image_drop(wh)
    assert_skipped(cross_stage.label_drift(wh, "d1", source), "too few images (1 of 10 needed)")
    big = add_drop(wh, "d2", [f"img{i}" for i in range(10)], at=T0 + dt.timedelta(hours=1))
    for iid in big:
        add_zero_shot(wh, iid, CLIP, "scenery", {"indoors": 0.9, "cloudy": 0.1})
    assert_skipped(
        cross_stage.label_drift(wh, "d2", source),
        "too few images in earlier drops (1 of 10 needed)",
    )
    judged = cross_stage.label_drift(wh, "d2", source, min_images=1)
    assert judged.skipped is None and judged.value is not None


def test_folded_outcomes_say_skipped_only_when_every_subject_was():
    from core.quality.outcome import too_few  # the shared helper every such check uses

    skipped = too_few("c", have=1, need=10, subject="a")
    judged = CheckOutcome(check_name="c", passed=True, severity="WARN", summary="b: fine")
    (both,) = merge_outcomes({"a": [skipped], "b": [judged]}, key="label_set")
    assert both.skipped is None and both.passed
    assert both.summary == "skipped: too few images (1 of 10 needed) for a; b: fine"
    assert both.details["subjects"]["a"]["skipped"] == "too few images (1 of 10 needed)"
    (all_skipped,) = merge_outcomes(
        {"a": [skipped], "b": [too_few("c", have=1, need=10, subject="b")]}, key="label_set"
    )
    assert all_skipped.skipped == "too few images (1 of 10 needed)"
    assert all_skipped.summary == "skipped: too few images (1 of 10 needed) for a, b"
