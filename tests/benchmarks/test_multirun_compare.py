"""The multi-run benchmark's row-for-row comparison (benchmarks/multirun.py `compare`): a failed
run's rows of a per-run history table are its own history, not part of the end state."""

from __future__ import annotations

from benchmarks.multirun import compare

QUALITY = [
    ("run_id", "VARCHAR"),
    ("asset", "VARCHAR"),
    ("check_name", "VARCHAR"),
    ("partition", "VARCHAR"),
    ("passed", "BOOLEAN"),
]
EXTRACTIONS = [("run_id", "VARCHAR"), ("image_id", "VARCHAR"), ("answer", "VARCHAR")]


def _snapshot(quality: list[tuple], extractions: list[tuple]) -> dict:
    return {
        "quality_results": {"columns": QUALITY, "rows": quality},
        "vlm_extractions": {"columns": EXTRACTIONS, "rows": extractions},
    }


def test_a_killed_runs_check_rows_are_left_out_and_its_retrys_compared():
    serial = _snapshot([("s1", "images", "decodable", "drop-0", True)], [("s1", "a", "x")])
    here = _snapshot(
        [
            ("killed", "images", "decodable", "drop-0", True),
            ("retry", "images", "decodable", "drop-0", True),
        ],
        [("killed", "a", "x")],  # a committed batch of the killed run stays: the retry skips it
    )
    found = compare(serial, here, failed_runs={"killed"})
    assert found["differences"] == {}
    assert found["left_out"] == {"quality_results": 1}
    assert found["rows_compared"] == 2


def test_without_the_failed_run_named_its_rows_are_a_difference():
    serial = _snapshot([("s1", "images", "decodable", "drop-0", True)], [])
    here = _snapshot(
        [
            ("killed", "images", "decodable", "drop-0", True),
            ("retry", "images", "decodable", "drop-0", True),
        ],
        [],
    )
    assert set(compare(serial, here)["differences"]) == {"quality_results"}


def test_a_failed_runs_rows_of_a_result_table_still_count():
    serial = _snapshot([], [("s1", "a", "x")])
    here = _snapshot([], [])  # the killed run's batch is missing: a real difference
    found = compare(serial, here, failed_runs={"killed"})
    assert set(found["differences"]) == {"vlm_extractions"}
