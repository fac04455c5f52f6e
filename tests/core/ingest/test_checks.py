"""The `images` asset's checks pass on good data and fail on bad data planted in a real DuckDB file."""

from __future__ import annotations

import datetime as dt

import pytest

from core.ingest import checks
from core.ingest.accounting import Accounting
from core.warehouse import Warehouse
from tests.fixtures.contracts import add_drop, image_id

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def wh(warehouse: Warehouse) -> Warehouse:
    warehouse.ensure_schema()
    return warehouse


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
