"""Outcomes: folding several subjects into one check, and their SQL trail in quality_results."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from core.ingest.checks import rejection_rate
from core.quality.outcome import CheckOutcome, merge_outcomes, record_outcomes, subject_counts
from core.warehouse import Warehouse
from tests.fixtures.contracts import add_drop

pytestmark = pytest.mark.both_backends  # the warehouse SQL runs on the file and the lake

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def wh(warehouse: Warehouse) -> Warehouse:
    warehouse.ensure_schema()
    return warehouse


def test_recorded_outcomes_are_queryable_and_a_rerun_replaces_them(wh):
    add_drop(wh, "d1", ["a"], at=T0, rejected=["x.txt"])
    outcome = rejection_rate(wh, "d1", max_rate=0.2)
    for _ in range(2):
        record_outcomes(wh, [outcome], run_id="r1", asset="images", partition="d1")
    rows = wh.rows(
        "SELECT check_name, passed, severity, value, threshold, details->>'$.summary',"
        " CAST(details->'$.counts.rejected' AS INTEGER) FROM quality_results"
    )
    assert rows == [("rejection_rate", False, "WARN", 0.5, 0.2, outcome.summary, 1)]
    assert (
        json.loads(wh.rows("SELECT details FROM quality_results")[0][0])["offending"][0]["reason"]
        == "not_an_image"
    )


def test_merged_outcomes_keep_the_worst_severity_and_every_subject():
    ok = CheckOutcome(check_name="c", passed=True, severity="WARN", summary="fine")
    bad = CheckOutcome(
        check_name="c",
        passed=False,
        severity="ERROR",
        summary="broken",
        value=0.2,
        counts={"images": 3},
        offending=[{"image_id": "x"}],
    )
    (merged,) = merge_outcomes({"t1": [ok], "t2": [bad]}, key="task")
    assert (merged.passed, merged.severity, merged.value) == (False, "ERROR", 0.2)
    assert merged.summary == "fine; broken"
    assert merged.offending == [{"task": "t2", "image_id": "x"}]


def agreement(rate: float, compared: int, *, passed: bool) -> CheckOutcome:
    return CheckOutcome(
        check_name="clip_vlm_agreement",
        passed=passed,
        severity="WARN",
        summary=f"{rate:.0%} of {compared}",
        value=rate,
        threshold=0.5,
        better="higher",
        counts={"images_compared": compared, "agreed": round(rate * compared)},
    )


def test_folded_agreement_reports_the_worst_subject_and_counts_per_subject():
    """Test failed before the fix: the value was the first failing subject's (0.25 for scenery
    while age agreed 0%) and `images_compared` was summed across fields (6)."""
    (merged,) = merge_outcomes(
        {
            "scenery": [agreement(0.25, 4, passed=False)],
            "age_group": [agreement(0.0, 2, passed=False)],
            "gender": [agreement(0.9, 2, passed=True)],
        },
        key="field",
    )
    assert (merged.value, merged.details["worst"]) == (0.0, "age_group")
    assert merged.counts == {"images_compared": 2, "agreed": 0}
    assert subject_counts(merged) == {
        "scenery": {"images_compared": 4, "agreed": 1},
        "age_group": {"images_compared": 2, "agreed": 0},
        "gender": {"images_compared": 2, "agreed": 2},
    }


def test_the_worst_of_offender_counts_is_the_largest_and_an_error_beats_a_warning():
    def offenders(n: int, severity: str) -> CheckOutcome:
        return CheckOutcome(
            check_name="c", passed=n == 0, severity=severity, summary="s", value=float(n)
        )

    (merged,) = merge_outcomes(
        {"a": [offenders(5, "WARN")], "b": [offenders(1, "ERROR")], "c": [offenders(0, "ERROR")]},
        key="kind",
    )
    assert (merged.value, merged.details["worst"], merged.severity) == (1.0, "b", "ERROR")
    (merged,) = merge_outcomes(
        {"a": [offenders(2, "WARN")], "b": [offenders(7, "WARN")]}, key="kind"
    )
    assert (merged.value, merged.details["worst"]) == (7.0, "b")
