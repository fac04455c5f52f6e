"""Each check passes on good data and fails on bad data planted in a real DuckDB file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math

import pytest

from core.ingest.accounting import Accounting
from core.quality import checks
from core.quality.checks import ExtractionScope, LabelSource
from core.quality.fields import FIELDS
from core.tasks.label_sets import LABEL_SETS
from core.tasks.registry import get_task
from core.warehouse import Warehouse
from tests.fixtures.contracts import (
    add_drop,
    add_embeddings,
    add_extraction,
    add_zero_shot,
    image_id,
    plant_embedding,
    plant_sql,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CLIP = "standin-clip"
VLM = "standin-llava"
SCOPE = ExtractionScope(task="scenery_people", model_id=VLM)


SCENERY_PEOPLE = get_task("scenery_people")


@pytest.fixture
def wh(warehouse: Warehouse) -> Warehouse:
    warehouse.ensure_schema()
    return warehouse


def unit(i: int, dim: int = 4) -> list[float]:
    return [1.0 if j == i % dim else 0.0 for j in range(dim)]


# images -------------------------------------------------------------------------------------


def test_nothing_lost_wraps_the_ingest_accounting():
    good = checks.nothing_lost(Accounting(3, 2, 1))
    bad = checks.nothing_lost(Accounting(3, 1, 1, missing=["d/x.jpg"]))
    assert good.passed and good.counts["files_seen"] == 3
    assert not bad.passed and bad.offending == [{"path": "d/x.jpg", "problem": "missing"}]


def test_unique_image_ids_pass_on_a_clean_drop_and_with_a_duplicate_file(wh):
    add_drop(wh, "d1", ["a", "b"], at=T0)
    add_drop(wh, "d2", ["b", "c"], at=T0 + dt.timedelta(hours=1))  # b again: a duplicate file
    outcome = checks.unique_image_ids(wh, "d2")
    assert outcome.passed and outcome.counts["images"] == 2


def test_unique_image_ids_fail_on_an_image_first_seen_twice_and_a_malformed_id(wh):
    add_drop(wh, "d1", ["a", "b"], at=T0)
    with wh.transaction() as conn:  # a bug marks a known image as new again, and a bad hash
        conn.execute(
            "INSERT INTO image_files (drop_id, path, image_id, is_duplicate, byte_size, mtime_ns, ingested_at)"
            " VALUES ('d1', 'd1/copy.jpg', ?, false, 100, 0, now())",
            [image_id("a")],
        )
        conn.execute(
            "INSERT INTO image_files (drop_id, path, image_id, is_duplicate, byte_size, mtime_ns, ingested_at)"
            " VALUES ('d1', 'd1/bad.jpg', 'XYZ', false, 100, 0, now())"
        )
    outcome = checks.unique_image_ids(wh, "d1")
    assert not outcome.passed and outcome.severity == "ERROR"
    problems = {
        row["image_id"]: row["problem"]
        for row in outcome.offending
        if row["image_id"] == image_id("a")
    }
    assert problems[image_id("a")].startswith("first seen at 2 paths")
    assert {"image_id": "XYZ", "problem": "not a sha256 hex digest"} in outcome.offending
    assert outcome.counts["offending_images"] == 2


def test_rejection_rate_warns_above_the_threshold(wh):
    add_drop(wh, "ok", ["a", "b", "c", "d"], at=T0, rejected=["notes.txt"])
    add_drop(wh, "bad", ["e"], at=T0, rejected=["x.txt", "y.txt"])
    assert checks.rejection_rate(wh, "ok", max_rate=0.2).passed  # 1 of 5 = 20%
    outcome = checks.rejection_rate(wh, "bad", max_rate=0.2)
    assert not outcome.passed and outcome.severity == "WARN"
    assert outcome.value == pytest.approx(2 / 3)
    assert outcome.offending == [{"reason": "not_an_image", "files": 2, "example": "bad/x.txt"}]


# embeddings ---------------------------------------------------------------------------------


def by_name(outcomes: list[checks.CheckOutcome]) -> dict[str, checks.CheckOutcome]:
    return {outcome.check_name: outcome for outcome in outcomes}


def test_embedding_checks_pass_on_one_unit_vector_per_image(wh):
    ids = add_drop(wh, "d1", ["a", "b", "c"], at=T0)
    add_embeddings(wh, [(iid, CLIP, unit(i)) for i, iid in enumerate(ids)])
    add_embeddings(wh, [(ids[0], "other-model", [0.6, 0.8])])  # another model's dimension
    outcomes = checks.embedding_checks(wh, "d1", CLIP, expected_dim=4)
    assert [o.check_name for o in outcomes if not o.passed] == []


def test_embedding_checks_catch_missing_repeated_wrong_dimension_nan_and_unnormalised(wh):
    ids = add_drop(wh, "d1", ["a", "b", "c", "d", "e", "f"], at=T0)
    add_embeddings(wh, [(ids[0], CLIP, unit(0)), (ids[4], CLIP, [1.0, 0, 0, 0])])
    add_embeddings(wh, [(ids[0], CLIP, [1.0, 0.0, 0.0])])  # repeated, in the 3-d table
    add_embeddings(wh, [(ids[1], CLIP, [0.0, 1.0, 0.0])])  # only a wrong-dimension vector
    plant_embedding(wh, ids[2], CLIP, [math.nan, 0, 0, 1])  # not finite
    plant_embedding(wh, ids[3], CLIP, [2.0, 0, 0, 0])  # norm 2
    plant_sql(  # within tolerance
        wh,
        "UPDATE clip_embeddings_d4 SET embedding = [1.0005, 0, 0, 0] WHERE image_id = ?",
        [ids[4]],
    )
    # ids[5]: missing
    found = by_name(checks.embedding_checks(wh, "d1", CLIP, expected_dim=4, norm_tolerance=1e-3))
    one = found[checks.EMBEDDING_ONE_PER_IMAGE]
    assert not one.passed and (one.counts["missing"], one.counts["repeated"]) == (1, 1)
    assert {row["image_id"] for row in one.offending} == {ids[0], ids[5]}
    dim = found[checks.EMBEDDING_DIMENSION]
    assert not dim.passed
    assert sorted(dim.offending, key=lambda r: r["image_id"]) == sorted(
        [{"image_id": i, "dim": 3, "length": 3} for i in (ids[0], ids[1])],
        key=lambda r: r["image_id"],
    )
    assert found[checks.EMBEDDING_FINITE].offending == [{"image_id": ids[2]}]
    norm = found[checks.EMBEDDING_UNIT_NORM]
    assert [row["image_id"] for row in norm.offending] == [ids[3]]


def test_a_lying_dim_column_fails_the_dimension_check(wh):
    (iid,) = add_drop(wh, "d1", ["a"], at=T0)
    plant_embedding(wh, iid, CLIP, unit(0), dim=8)
    dim = by_name(checks.embedding_checks(wh, "d1", CLIP, expected_dim=4))[
        checks.EMBEDDING_DIMENSION
    ]
    assert not dim.passed and dim.offending == [{"image_id": iid, "dim": 8, "length": 4}]


def test_embedding_checks_fail_clearly_before_anything_was_embedded(warehouse):
    add_drop(warehouse, "d1", ["a"], at=T0)
    found = by_name(checks.embedding_checks(warehouse, "d1", CLIP, expected_dim=4))
    one = found[checks.EMBEDDING_ONE_PER_IMAGE]
    assert not one.passed and one.counts["missing"] == 1
    assert "1 images without" in one.summary


def test_merged_outcomes_over_kinds_fail_when_one_kind_fails(wh):
    ids = add_drop(wh, "d1", ["a", "b"], at=T0)
    add_embeddings(wh, [(iid, CLIP, unit(i)) for i, iid in enumerate(ids)])
    add_embeddings(wh, [(ids[0], CLIP, unit(0, 2))], kind="s2")
    merged = by_name(checks.embedding_checks_by_kind(wh, "d1", CLIP, {"global": 4, "s2": 2}))
    one = merged[checks.EMBEDDING_ONE_PER_IMAGE]
    assert not one.passed and one.counts["missing"] == 1
    assert one.offending == [{"kind": "s2", "image_id": ids[1], "rows": 0}]
    assert merged[checks.EMBEDDING_UNIT_NORM].passed


# extraction ---------------------------------------------------------------------------------

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


# drift and agreement ------------------------------------------------------------------------


def zero_shot_drop(wh: Warehouse, drop_id: str, labels: list[str], at: dt.datetime) -> list[str]:
    ids = add_drop(wh, drop_id, [f"{drop_id}-{i}" for i in range(len(labels))], at=at)
    for iid, label in zip(ids, labels, strict=True):
        add_zero_shot(
            wh,
            iid,
            CLIP,
            "scenery",
            {label: 0.9, "night_time" if label != "night_time" else "cloudy": 0.1},
        )
    return ids


def test_drift_passes_without_history_and_on_a_similar_drop_and_warns_on_a_shift(wh):
    source = LabelSource.zero_shot("scenery", CLIP)
    zero_shot_drop(wh, "d1", ["indoors"] * 6 + ["blue_sky"] * 4, T0)
    first = checks.label_drift(wh, "d1", source)
    assert first.passed and "no earlier drops" in first.summary
    zero_shot_drop(wh, "d2", ["indoors"] * 3 + ["blue_sky"] * 2, T0 + dt.timedelta(hours=1))
    similar = checks.label_drift(wh, "d2", source, threshold=0.25)
    assert similar.passed and similar.value is not None and similar.value < 0.25
    zero_shot_drop(wh, "d3", ["night_time"] * 8, T0 + dt.timedelta(hours=2))
    shifted = checks.label_drift(
        wh, "d3", source, threshold=0.25, categories=FIELDS["scenery"].values
    )
    assert not shifted.passed and shifted.severity == "WARN"
    assert shifted.counts == {"current_images": 8, "reference_images": 15}
    assert shifted.details["reference"]["indoors"] == 9


def test_agreement_rate_and_confusion_between_clip_and_vlm(wh):
    ids = add_drop(wh, "d1", ["a", "b", "c", "d"], at=T0)
    clip = ["indoors", "indoors", "cloudy", "blue_sky"]
    vlm = ["indoors", "cloudy", "cloudy", "indoors"]
    for iid, c, v in zip(ids, clip, vlm, strict=True):
        add_zero_shot(wh, iid, CLIP, "scenery", {c: 0.8, "night_time": 0.2})
        add_extraction(wh, iid, "scenery_people", VLM, "ok", {"scenery": v, "people": []})
    kwargs = {"clip_model_id": CLIP, "vlm_model_id": VLM}
    outcome = checks.agreement(wh, "d1", FIELDS["scenery"], min_rate=0.6, **kwargs)
    assert not outcome.passed and outcome.value == 0.5
    confusion = outcome.details["confusion"]
    cell = confusion["matrix"][confusion["labels"].index("indoors")][
        confusion["labels"].index("cloudy")
    ]
    assert cell == 1
    assert checks.agreement(wh, "d1", FIELDS["scenery"], min_rate=0.5, **kwargs).passed
    with pytest.raises(ValueError, match="not predicted by both"):
        checks.agreement(wh, "d1", FIELDS["gender"], **kwargs)


# recording ----------------------------------------------------------------------------------


def test_recorded_outcomes_are_queryable_and_a_rerun_replaces_them(wh):
    add_drop(wh, "d1", ["a"], at=T0, rejected=["x.txt"])
    outcome = checks.rejection_rate(wh, "d1", max_rate=0.2)
    for _ in range(2):
        checks.record_outcomes(wh, [outcome], run_id="r1", asset="images", partition="d1")
    rows = wh.rows(
        "SELECT check_name, passed, severity, value, threshold, details->>'$.summary',"
        " CAST(details->'$.counts.rejected' AS INTEGER) FROM quality_results"
    )
    assert rows == [("rejection_rate", False, "WARN", 0.5, 0.2, outcome.summary, 1)]
    assert (
        json.loads(wh.rows("SELECT details FROM quality_results")[0][0])["offending"][0]["reason"]
        == "not_an_image"
    )


# zero-shot ----------------------------------------------------------------------------------


def zero_shot_outcomes(wh: Warehouse, drop_id: str = "d1") -> dict[str, checks.CheckOutcome]:
    label_set = LABEL_SETS["scenery"]
    return by_name(
        checks.zero_shot_checks(
            wh,
            drop_id,
            CLIP,
            "scenery",
            labels=label_set.labels,
            fingerprint=label_set.fingerprint,
        )
    )


def test_zero_shot_checks_pass_on_rows_the_writer_produced(wh):
    ids = add_drop(wh, "d1", ["a", "b"], at=T0)
    for iid in ids:
        add_zero_shot(wh, iid, CLIP, "scenery", {"indoors": 0.7, "cloudy": 0.3})
    assert [o.check_name for o in zero_shot_outcomes(wh).values() if not o.passed] == []


def test_zero_shot_checks_catch_missing_stale_and_malformed_rows(wh):
    ids = add_drop(wh, "d1", ["a", "b", "c", "d", "e"], at=T0)
    for iid in ids[:4]:
        add_zero_shot(wh, iid, CLIP, "scenery", {"indoors": 0.7, "cloudy": 0.3})
    update = "UPDATE clip_zero_shot SET {} WHERE image_id = ?"
    plant_sql(wh, update.format("label_set_fingerprint = 'old'"), [ids[0]])  # stale version
    plant_sql(  # probabilities no longer sum to 1
        wh,
        update.format(
            "probabilities = map_from_entries([('indoors', 0.5), ('cloudy', 0.3), ('blue_sky', 0.0), ('golden_hour', 0.0), ('night_time', 0.0)])"
        ),
        [ids[1]],
    )
    plant_sql(wh, update.format("top_label = 'cloudy'"), [ids[2]])  # not the argmax
    plant_sql(  # a label outside the set
        wh, update.format("probabilities = map_from_entries([('underwater', 1.0)])"), [ids[3]]
    )
    found = zero_shot_outcomes(wh)
    one = found[checks.ZERO_SHOT_ONE_PER_IMAGE]
    assert not one.passed and one.counts == {"images": 5, "missing_or_stale": 2}
    assert {row["image_id"]: row["stale_fingerprint"] for row in one.offending} == {
        ids[0]: "old",
        ids[4]: None,
    }
    probabilities = found[checks.ZERO_SHOT_PROBABILITIES]
    assert not probabilities.passed and probabilities.severity == "ERROR"
    assert {row["image_id"]: row["problem"] for row in probabilities.offending} == {
        ids[1]: "probabilities do not sum to 1",
        ids[2]: "top label is not the most probable",
        ids[3]: "labels differ from the set",
    }


# folding, models and labelled images ------------------------------------------------------


def test_merged_outcomes_keep_the_worst_severity_and_every_subject():
    ok = checks.CheckOutcome(check_name="c", passed=True, severity="WARN", summary="fine")
    bad = checks.CheckOutcome(
        check_name="c",
        passed=False,
        severity="ERROR",
        summary="broken",
        value=0.2,
        counts={"images": 3},
        offending=[{"image_id": "x"}],
    )
    (merged,) = checks.merge_outcomes({"t1": [ok], "t2": [bad]}, key="task")
    assert (merged.passed, merged.severity, merged.value) == (False, "ERROR", 0.2)
    assert merged.summary == "fine; broken"
    assert merged.offending == [{"task": "t2", "image_id": "x"}]


def test_models_of_a_drop_most_images_first(wh):
    ids = add_drop(wh, "d1", ["a", "b"], at=T0)
    for iid in ids:
        add_zero_shot(wh, iid, "clip-big", "scenery", {"indoors": 1.0})
    add_zero_shot(wh, ids[0], "clip-small", "scenery", {"indoors": 1.0})
    add_zero_shot(wh, ids[0], "clip-other-set", "age_group", {"21-30": 1.0})
    source = LabelSource.zero_shot("scenery", "")
    assert checks.models_of_drop(wh, "d1", source) == ["clip-big", "clip-small"]
    assert checks.models_of_drop(wh, "d2", source) == []


def test_labelled_images_never_ingested_warn(wh):
    ids = add_drop(wh, "d1", ["a"], at=T0)
    assert checks.labelled_images_ingested(wh, {ids[0]: "a.jpg"}).passed
    outcome = checks.labelled_images_ingested(wh, {ids[0]: "a.jpg", image_id("z"): "z.jpg"})
    assert (outcome.passed, outcome.severity, outcome.value) == (False, "WARN", 0.5)
    assert outcome.offending == [{"image_id": image_id("z"), "path": "z.jpg"}]
