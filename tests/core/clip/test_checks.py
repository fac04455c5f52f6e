"""The CLIP assets' checks pass on good data and fail on bad data planted in a real DuckDB file."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from core.clip import checks
from core.quality.outcome import CheckOutcome
from core.tasks.label_sets import LABEL_SETS
from core.warehouse import Warehouse
from tests.fixtures.contracts import (
    add_drop,
    add_embeddings,
    add_zero_shot,
    plant_embedding,
    plant_sql,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CLIP = "standin-clip"


@pytest.fixture
def wh(warehouse: Warehouse) -> Warehouse:
    warehouse.ensure_schema()
    return warehouse


def unit(i: int, dim: int = 4) -> list[float]:
    return [1.0 if j == i % dim else 0.0 for j in range(dim)]


def by_name(outcomes: list[CheckOutcome]) -> dict[str, CheckOutcome]:
    return {outcome.check_name: outcome for outcome in outcomes}


# embeddings ---------------------------------------------------------------------------------


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


def test_an_embedding_with_a_null_element_is_not_finite(wh):
    """duckdb 1.5 turns a NaN inside a bound list into NULL: such a vector must still fail."""
    ids = add_drop(wh, "d1", ["a", "b"], at=T0)
    plant_embedding(wh, ids[0], CLIP, [None, 0, 0, 1])
    plant_embedding(wh, ids[1], CLIP, [0.0, 0, 0, 1])
    found = by_name(checks.embedding_checks(wh, "d1", CLIP, expected_dim=4))
    assert found[checks.EMBEDDING_FINITE].offending == [{"image_id": ids[0]}]


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


# zero-shot ----------------------------------------------------------------------------------


def zero_shot_outcomes(wh: Warehouse, drop_id: str = "d1") -> dict[str, CheckOutcome]:
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


# model guards -------------------------------------------------------------------------------


def collapse(wh: Warehouse, min_images: int = 10) -> CheckOutcome:
    return checks.zero_shot_collapse(
        wh,
        "d1",
        CLIP,
        "scenery",
        fingerprint=LABEL_SETS["scenery"].fingerprint,
        min_images=min_images,
    )


def test_zero_shot_collapse_warns_when_one_label_tops_every_image_of_a_large_drop(wh):
    ids = add_drop(wh, "d1", [f"img{i}" for i in range(10)], at=T0)
    for iid in ids:  # every row a valid softmax, all mass on one label
        add_zero_shot(wh, iid, CLIP, "scenery", {"indoors": 0.97, "cloudy": 0.03})
    outcome = collapse(wh)
    assert not outcome.passed and outcome.severity == "WARN" and outcome.value == 1.0
    assert outcome.offending == [{"label": "indoors", "images": 10, "mean_probability": 0.97}]
    assert collapse(wh, min_images=11).passed  # too few images to judge


def test_zero_shot_collapse_passes_when_top_labels_vary(wh):
    ids = add_drop(wh, "d1", [f"img{i}" for i in range(10)], at=T0)
    for i, iid in enumerate(ids):
        top = "indoors" if i else "night_time"
        add_zero_shot(wh, iid, CLIP, "scenery", {top: 0.9, "cloudy": 0.1})
    outcome = collapse(wh)
    assert outcome.passed and outcome.counts == {"images": 10, "distinct_top_labels": 2}
