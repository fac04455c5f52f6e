"""Check outcomes become Dagster check results with the severity and metadata the UI shows."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from assets.quality import as_check_result
from core.quality.drift import compare
from core.quality.metrics import confusion_matrix
from core.quality.outcome import CheckOutcome, merge_outcomes, offending_paths, too_few
from tests.fixtures.contracts import add_drop

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_a_warning_keeps_its_severity_summary_counts_and_sample():
    outcome = CheckOutcome(
        check_name="rejection_rate",
        passed=False,
        severity="WARN",
        summary="3 of 4 files rejected",
        value=0.75,
        threshold=0.2,
        counts={"rejected": 3},
        offending=[{"reason": "corrupt", "files": 3}],
    )
    result = as_check_result(outcome, drop="d1")
    assert (result.check_name, result.passed) == ("rejection_rate", False)
    assert result.severity == dg.AssetCheckSeverity.WARN
    assert result.description == "drop d1 · warning: 3 of 4 files rejected"
    assert result.metadata["outcome"].value == "warning: worth a look, the run goes on"
    assert result.metadata["value"].value == 0.75 and result.metadata["rejected"].value == 3
    (row,) = result.metadata["offending_sample"].value.records
    assert row.data == {"reason": "corrupt", "files": 3}


def test_agreement_and_drift_details_render_as_markdown_tables():
    matrix = confusion_matrix(["indoors"], ["cloudy"], labels=["cloudy", "indoors"])
    agreement = as_check_result(
        CheckOutcome(
            check_name="clip_vlm_agreement",
            passed=True,
            severity="WARN",
            summary="s",
            details={"confusion": matrix.model_dump()},
        )
    )
    assert "| **indoors** | 1 | 0 |" in agreement.metadata["confusion"].value
    drift = compare({"a": 3}, {"b": 1})
    result = as_check_result(
        CheckOutcome(
            check_name="label_drift",
            passed=False,
            severity="WARN",
            summary="s",
            details=drift.model_dump(),
        )
    )
    assert "| a | 3 | 0 |" in result.metadata["distribution"].value


def test_only_values_worth_plotting_are_numbers_and_the_bound_is_text():
    """Dagster plots every numeric check field over time: a constant threshold is noise."""
    result = as_check_result(
        CheckOutcome(
            check_name="extraction_coverage",
            passed=False,
            severity="ERROR",
            summary="s",
            value=0.5,
            threshold=1.0,
            better="higher",
            counts={"images": 4},
        )
    )
    assert result.metadata["threshold"] == dg.MetadataValue.text("fails below 1")
    assert result.metadata["value"] == dg.MetadataValue.float(0.5)
    assert result.metadata["images"] == dg.MetadataValue.int(4)
    numeric = {
        key
        for key, value in result.metadata.items()
        if isinstance(value, dg.FloatMetadataValue | dg.IntMetadataValue)
    }
    assert numeric == {"value", "images"}


def test_a_folded_check_shows_its_worst_subject_and_a_table_of_every_subject():
    def agreement(rate: float, compared: int) -> CheckOutcome:
        return CheckOutcome(
            check_name="clip_vlm_agreement",
            passed=rate >= 0.5,
            severity="WARN",
            summary="s",
            value=rate,
            threshold=0.5,
            better="higher",
            counts={"images_compared": compared},
        )

    (merged,) = merge_outcomes(
        {"scenery": [agreement(0.14, 7)], "age_group": [agreement(0.0, 3)]}, key="field"
    )
    result = as_check_result(merged)
    assert result.metadata["value"].value == 0.0
    assert result.metadata["worst_subject"].value == "age_group"
    assert result.metadata["images_compared"].value == 3  # the worst field's, not 10
    table = result.metadata["subjects"].value
    assert "| field | passed | value | images_compared |" in table
    assert "| scenery | no | 0.14 | 7 |" in table and "| **age_group** | no | 0 | 3 |" in table
    assert result.metadata["threshold"].value == "warns below 0.5"


# check pages a person can read (issue 20, item 3) -----------------------------------------


def test_a_check_names_its_drop_rounds_its_value_and_says_when_it_skipped():
    rate = CheckOutcome(
        check_name="clip_vlm_agreement",
        passed=True,
        severity="WARN",
        summary="agree on 2 of 3 images",
        value=2 / 3,
    )
    result = as_check_result(rate, drop="samples")
    assert result.metadata["value"] == dg.MetadataValue.float(0.6667)
    assert result.description == "drop samples · agree on 2 of 3 images"
    assert result.metadata["drop"].value == "samples"
    assert result.metadata["outcome"].value == "passed"
    skipped = as_check_result(too_few("label_drift", have=1, need=10), drop="samples")
    assert skipped.passed and "value" not in skipped.metadata
    assert skipped.description == "drop samples · skipped: too few images (1 of 10 needed)"
    assert skipped.metadata["outcome"].value == "skipped: too few images (1 of 10 needed)"


def test_the_offending_sample_is_a_table_of_file_paths_not_image_ids(warehouse):
    ids = add_drop(warehouse, "d1", ["cat", "dog"], at=T0)
    earlier = add_drop(warehouse, "d0", ["old"], at=T0)
    offending = [
        {"image_id": ids[0], "problem": "not finite"},
        {"image_id": ids[1], "other_image_id": earlier[0], "cosine": 0.98765432},
        {"image_id": "f" * 64, "problem": "never ingested"},
    ]
    outcome = CheckOutcome(
        check_name="no_near_duplicates",
        passed=False,
        severity="WARN",
        summary="s",
        offending=offending,
    )
    paths = offending_paths(warehouse, "d1", offending)
    table = as_check_result(outcome, drop="d1", paths=paths).metadata["offending_sample"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [column.name for column in table.schema.columns] == [
        "path",
        "problem",
        "other_path",
        "cosine",
        "image_id",
    ]
    assert [record.data for record in table.records] == [
        {
            "path": "d1/cat.jpg",
            "problem": "not finite",
            "other_path": None,
            "cosine": None,
            "image_id": None,
        },
        {
            "path": "d1/dog.jpg",
            "problem": None,
            "other_path": "d0/old.jpg",  # an earlier drop's image: where it was first seen
            "cosine": 0.9877,
            "image_id": None,
        },
        {
            "path": None,
            "problem": "never ingested",
            "other_path": None,
            "cosine": None,
            "image_id": "f" * 12,
        },
    ]
