"""The `images` asset through Dagster: metadata for the UI and the blocking nothing-lost check."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assets.ingestion import (
    NOTHING_LOST_CHECK,
    REJECTION_RATE_CHECK,
    UNIQUE_IMAGE_ID_CHECK,
    images,
)
from core.ingest.ingest import DropIngestor
from core.warehouse import Warehouse
from resources.drop_folder import DropFolderResource
from resources.warehouse import WarehouseResource
from tests.core.ingest.test_limits import _thin_png
from tests.fixtures.bad_inputs import bomb_png


def materialize(
    instance: dg.DagsterInstance, warehouse: Warehouse, drop_root: Path, drop_id: str, **config
) -> dg.ExecuteInProcessResult:
    if not instance.has_dynamic_partition("image_drops", drop_id):
        instance.add_dynamic_partitions("image_drops", [drop_id])
    return dg.materialize(
        [images],
        instance=instance,
        partition_key=drop_id,
        resources={
            "warehouse": WarehouseResource(path=str(warehouse.path)),
            "drop_folder": DropFolderResource(root=str(drop_root)),
        },
        run_config={"ops": {"images": {"config": config}}} if config else None,
        raise_on_error=False,
    )


def test_materializing_a_drop_reports_counts_schema_preview_and_throughput(
    instance, warehouse, drop_root, sample_drop
):
    result = materialize(instance, warehouse, drop_root, "samples")
    assert result.success
    metadata = result.asset_materializations_for_node("images")[0].metadata
    assert metadata["dagster/partition_row_count"].value == 7
    assert metadata["images_new"].value == 7
    assert metadata["files_per_s"].value > 0
    columns = [c.name for c in metadata["dagster/column_schema"].value.columns]
    assert columns[:3] == ["image_id", "byte_size", "format"]
    assert all(c.description for c in metadata["dagster/column_schema"].value.columns)
    assert len(metadata["preview"].value.records) == 7
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations.keys() == {NOTHING_LOST_CHECK, UNIQUE_IMAGE_ID_CHECK, REJECTION_RATE_CHECK}
    assert all(e.passed for e in evaluations.values())


def test_a_contradicting_row_is_repaired_by_the_next_run(
    instance, warehouse, drop_root, sample_drop
):
    assert materialize(instance, warehouse, drop_root, "samples").success
    with warehouse.transaction() as conn:  # plant a rejection for a file that was accepted
        conn.execute(
            "INSERT INTO rejected_files (drop_id, path, reason, error, byte_size, mtime_ns, sha256, rejected_at)"
            " VALUES ('samples', 'samples/coffee.jpg', 'corrupt', 'planted',"
            " NULL, NULL, NULL, now())"
        )
    result = materialize(instance, warehouse, drop_root, "samples")
    assert result.success
    assert warehouse.rows("SELECT count(*) FROM rejected_files") == [(0,)]


def test_a_lost_file_fails_the_blocking_check(
    instance, warehouse, drop_root, sample_drop, monkeypatch: pytest.MonkeyPatch
):
    real_write = DropIngestor._write

    def lose_last_file(self, drop_id, outcomes, report):  # a bug that drops one file
        return real_write(self, drop_id, outcomes[:-1], report)

    monkeypatch.setattr(DropIngestor, "_write", lose_last_file)
    result = materialize(instance, warehouse, drop_root, "samples")
    (evaluation,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == NOTHING_LOST_CHECK
    ]
    assert not evaluation.passed
    assert evaluation.metadata["missing"].value == 1  # a count, as every check reports them
    sample = [row.data for row in evaluation.metadata["offending_sample"].value.records]
    assert sample == [{"path": "samples/rocket.jpg", "problem": "missing"}]
    assert not result.success  # blocking: downstream stages of the run would not start


def test_a_loose_drop_run_by_hand_without_its_file_list_fails_clearly(
    instance, warehouse, drop_root
):
    result = materialize(instance, warehouse, drop_root, "_loose-20260101T000000Z")
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and "has no file list" in failure.message


def test_a_loose_drop_rerun_by_hand_reuses_the_recorded_file_list(instance, warehouse, drop_root):
    (drop_root / "one.jpg").write_bytes(
        (Path(__file__).parents[2] / "data/samples/rocket.jpg").read_bytes()
    )
    drop = "_loose-20260101T000000Z"
    assert materialize(instance, warehouse, drop_root, drop, files=["one.jpg"]).success
    result = materialize(instance, warehouse, drop_root, drop)
    assert result.success
    assert (
        result.asset_materializations_for_node("images")[0].metadata["files_unchanged"].value == 1
    )


@pytest.mark.parametrize("setting", [{"max_file_mb": 0.2}, {"max_megapixels": 0.5}])
def test_limits_are_run_config(instance, warehouse, drop_root, sample_drop, setting):
    assert materialize(instance, warehouse, drop_root, "samples", **setting).success
    assert warehouse.rows("SELECT path, reason FROM rejected_files") == [
        ("samples/hubble_deep_field.jpg", "too_large")
    ]


def test_the_metadata_names_each_rejected_file_with_its_reason_and_a_clean_message(
    instance, warehouse, drop_root
):
    folder = drop_root / "mixed"
    folder.mkdir()
    for index in range(30):  # more than the image preview's 20 rows
        (folder / f"note-{index:02d}.jpg").write_text("a text file named like a photo\n")
    (folder / "empty.jpg").touch()
    result = materialize(instance, warehouse, drop_root, "mixed")
    assert result.success
    metadata = result.asset_materializations_for_node("images")[0].metadata
    records = [r.data for r in metadata["rejected_preview"].value.records]
    assert {(r["path"], r["reason"]) for r in records} == {
        ("mixed/empty.jpg", "empty"),
        *((f"mixed/note-{i:02d}.jpg", "not_an_image") for i in range(30)),
    }
    for record in records:
        assert record["error"] and " object at 0x" not in record["error"], record


def test_max_megapixels_above_pillows_default_applies_through_run_config(
    instance, warehouse, drop_root
):
    folder = drop_root / "huge"
    folder.mkdir()
    (folder / "200mp.png").write_bytes(bomb_png(20_000, 10_000))  # a 200 MP header, no data
    (folder / "thin.png").write_bytes(_thin_png(1, 400))
    assert materialize(instance, warehouse, drop_root, "huge", max_megapixels=300).success
    assert warehouse.rows("SELECT path, reason FROM rejected_files ORDER BY path") == [
        ("huge/200mp.png", "truncated"),  # decoded under the run's limit, not refused
        ("huge/thin.png", "extreme_aspect_ratio"),
    ]
