"""The `images` asset's quality checks through Dagster, with bad data planted, and their SQL trail."""

from __future__ import annotations

import json

import dagster as dg

from assets.ingestion import REJECTION_RATE_CHECK, UNIQUE_IMAGE_ID_CHECK
from core.ingest.hashing import sha256_file
from tests.assets.test_ingestion import materialize


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_check_outcomes_land_in_quality_results_per_run(
    instance, warehouse, drop_root, sample_drop
):
    first = materialize(instance, warehouse, drop_root, "samples")
    second = materialize(instance, warehouse, drop_root, "samples")
    rows = warehouse.rows(
        "SELECT run_id, check_name, partition, passed, severity FROM quality_results"
        " WHERE asset = 'images' ORDER BY run_id, check_name"
    )
    runs = sorted([first.run_id, second.run_id])
    assert [(r[0], r[1]) for r in rows] == [
        (run, name)
        for run in runs
        for name in ("nothing_lost", "rejection_rate", "unique_image_id")
    ]
    assert all(r[2] == "samples" and r[3] for r in rows)
    assert {r[1]: r[4] for r in rows}["rejection_rate"] == "WARN"


def test_many_rejected_files_warn_without_failing_the_run(
    instance, warehouse, drop_root, sample_drop
):
    for i in range(4):
        (sample_drop / f"notes{i}.txt").write_text("not an image")
    result = materialize(instance, warehouse, drop_root, "samples", max_rejection_rate=0.3)
    check = evaluations(result)[REJECTION_RATE_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["rejected"].value == 4 and check.metadata["files"].value == 11
    assert result.success  # a warning, not a blocking error


def test_an_image_recorded_as_new_twice_fails_the_blocking_uniqueness_check(
    instance, warehouse, drop_root, sample_drop
):
    assert materialize(instance, warehouse, drop_root, "samples").success
    rocket, _ = sha256_file(sample_drop / "rocket.jpg")
    with warehouse.transaction() as conn:  # plant: another drop claims rocket's bytes as new
        conn.execute(
            "INSERT INTO image_files (drop_id, path, image_id, is_duplicate, byte_size, mtime_ns, ingested_at)"
            " VALUES ('samples', 'samples/elsewhere/rocket.jpg', ?, false,"
            " 1, 0, now())",
            [rocket],
        )
    result = materialize(instance, warehouse, drop_root, "samples")
    check = evaluations(result)[UNIQUE_IMAGE_ID_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    (offending,) = [row.data for row in check.metadata["offending_sample"].value.records]
    # the image's id is shown as one of its paths in the drop (the smallest)
    assert offending["path"] == "samples/elsewhere/rocket.jpg"
    assert "first seen at 2 paths" in offending["problem"]
    assert not result.success  # blocking
    stored = warehouse.rows(
        "SELECT passed, details FROM quality_results WHERE check_name = ? AND run_id = ?",
        [UNIQUE_IMAGE_ID_CHECK, result.run_id],
    )
    assert stored[0][0] is False
    assert json.loads(stored[0][1])["offending"][0]["image_id"] == rocket
