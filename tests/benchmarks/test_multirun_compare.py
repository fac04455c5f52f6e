"""The multi-run benchmark's row-for-row comparison (benchmarks/multirun.py `compare`): of a
per-run history table (`quality_results`) the end state is each check's latest outcome."""

from __future__ import annotations

import datetime as dt

from benchmarks.multirun import compare

QUALITY = [
    ("run_id", "VARCHAR"),
    ("asset", "VARCHAR"),
    ("check_name", "VARCHAR"),
    ("partition", "VARCHAR"),
    ("passed", "BOOLEAN"),
    ("evaluated_at", "TIMESTAMP WITH TIME ZONE"),
]
EXTRACTIONS = [("run_id", "VARCHAR"), ("image_id", "VARCHAR"), ("answer", "VARCHAR")]
T0 = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _snapshot(quality: list[tuple], extractions: list[tuple]) -> dict:
    return {
        "quality_results": {"columns": QUALITY, "rows": quality},
        "vlm_extractions": {"columns": EXTRACTIONS, "rows": extractions},
    }


SERIAL = _snapshot(
    [
        ("s1", "images", "decodable", "drop-0", True, at(0)),
        ("s1", "clip_embeddings", "finite", "drop-0", True, at(1)),
    ],
    [("s1", "a", "x")],
)


def test_a_retried_steps_checks_are_compared_by_their_latest_outcome():
    here = _snapshot(
        [
            # The killed run finished `images` (its checks stay, the retry does not redo them)
            # and wrote a check of `clip_embeddings` before the kill; the retry wrote it again.
            ("killed", "images", "decodable", "drop-0", True, at(10)),
            ("killed", "clip_embeddings", "finite", "drop-0", False, at(11)),
            ("retry", "clip_embeddings", "finite", "drop-0", True, at(20)),
        ],
        [("killed", "a", "x")],  # a committed batch of the killed run stays: the retry skips it
    )
    found = compare(SERIAL, here)
    assert found["differences"] == {}
    assert found["left_out"] == {"quality_results": 1}
    assert found["rows_compared"] == 3


def test_a_latest_outcome_that_differs_is_a_difference():
    here = _snapshot(
        [
            ("killed", "images", "decodable", "drop-0", True, at(10)),
            ("retry", "clip_embeddings", "finite", "drop-0", True, at(11)),
            ("retry", "clip_embeddings", "finite", "drop-0", False, at(20)),
        ],
        [("killed", "a", "x")],
    )
    assert set(compare(SERIAL, here)["differences"]) == {"quality_results"}


def test_a_missing_check_or_result_row_is_a_difference():
    here = _snapshot([("retry", "images", "decodable", "drop-0", True, at(10))], [])
    assert set(compare(SERIAL, here)["differences"]) == {"quality_results", "vlm_extractions"}
