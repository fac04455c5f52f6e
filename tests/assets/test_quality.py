"""Check outcomes become Dagster check results with the severity and metadata the UI shows."""

from __future__ import annotations

import dagster as dg

from assets.quality import as_check_result
from core.quality.checks import CheckOutcome
from core.quality.drift import compare
from core.quality.metrics import confusion_matrix


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
