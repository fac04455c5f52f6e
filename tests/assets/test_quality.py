"""Check outcomes become Dagster check results with the severity and metadata the UI shows."""

from __future__ import annotations

import dagster as dg

from assets.quality import as_check_result
from core.quality.drift import compare
from core.quality.metrics import confusion_matrix
from core.quality.outcome import CheckOutcome, merge_outcomes


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
    result = as_check_result(outcome)
    assert (result.check_name, result.passed) == ("rejection_rate", False)
    assert result.severity == dg.AssetCheckSeverity.WARN
    assert result.description == "3 of 4 files rejected"
    assert result.metadata["value"].value == 0.75 and result.metadata["rejected"].value == 3
    assert result.metadata["offending_sample"].value == [{"reason": "corrupt", "files": 3}]


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
