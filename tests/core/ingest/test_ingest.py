"""Ingestion of whole drops: dedupe by content, idempotent reruns, stat-based skipping."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import core.ingest.ingest as ingest_module
from core.ingest.decode import DecodeLimits
from core.ingest.ingest import DropIngestor, IngestOptions, Outcome, _hash, recorded_paths
from core.ingest.scan import DropRef, SeenFile
from core.warehouse import Warehouse
from tests.conftest import copy_samples
from tests.fixtures.bad_inputs import jpeg_bytes

TABLES = ("images", "image_files", "rejected_files", "drops")


def snapshot(warehouse: Warehouse) -> dict:
    return {t: warehouse.query(f"SELECT * FROM {t} ORDER BY ALL") for t in TABLES}


def test_samples_become_images_with_their_properties(ingested_samples: Warehouse):
    rows = ingested_samples.query(
        "SELECT first_path, format, mode, width, height FROM images ORDER BY 1"
    )
    assert rows.height == 7
    assert rows.row(0) == ("samples/astronaut.jpg", "JPEG", "RGB", 512, 512)
    assert ("samples/camera.jpg", "JPEG", "L", 512, 512) in rows.rows()


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_running_the_same_drop_twice_changes_no_row(ingested_samples: Warehouse, drop_root: Path):
    before = snapshot(ingested_samples)
    report = DropIngestor(ingested_samples, drop_root).ingest(DropRef.folder("samples"))
    assert report.files_unchanged == 7 and report.files_processed == 0
    after = snapshot(ingested_samples)
    for table in TABLES:
        assert after[table].equals(before[table]), table


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_two_drops_holding_the_same_image_share_one_images_row(ingested_samples, drop_root):
    copy_samples(drop_root, "again", names=["chelsea.jpg"])
    report = DropIngestor(ingested_samples, drop_root).ingest(DropRef.folder("again"))
    assert (report.images_new, report.files_duplicate) == (0, 1)
    rows = ingested_samples.rows(
        "SELECT drop_id, is_duplicate, count(*) OVER (PARTITION BY image_id) FROM image_files"
        " WHERE image_id = (SELECT image_id FROM images WHERE first_path = 'samples/chelsea.jpg')"
        " ORDER BY drop_id"
    )
    assert rows == [("again", True, 2), ("samples", False, 2)]
    assert ingested_samples.rows("SELECT count(*) FROM images")[0][0] == 7


def test_rescan_of_an_unchanged_drop_neither_hashes_nor_decodes(
    ingested_samples, drop_root, monkeypatch: pytest.MonkeyPatch
):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("an unchanged file was read")

    monkeypatch.setattr(ingest_module, "read_drop_file", forbidden)
    monkeypatch.setattr(ingest_module, "inspect_image", forbidden)
    report = DropIngestor(ingested_samples, drop_root).ingest(DropRef.folder("samples"))
    assert report.files_unchanged == 7


def test_a_touched_file_is_rehashed_and_its_content_decides(ingested_samples, drop_root):
    path = drop_root / "samples" / "coffee.jpg"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    before = ingested_samples.rows("SELECT * FROM images ORDER BY ALL")
    report = DropIngestor(ingested_samples, drop_root).ingest(DropRef.folder("samples"))
    assert (report.files_processed, report.images_new, report.files_duplicate) == (1, 0, 0)
    assert ingested_samples.rows("SELECT * FROM images ORDER BY ALL") == before


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_a_file_fixed_after_rejection_moves_to_image_files(ingested_samples, drop_root):
    broken = drop_root / "samples" / "late.jpg"
    broken.write_bytes(jpeg_bytes(seed=7)[:300])
    ingester = DropIngestor(ingested_samples, drop_root)
    ingester.ingest(DropRef.folder("samples"))
    assert ingested_samples.rows(
        "SELECT reason FROM rejected_files WHERE path = 'samples/late.jpg'"
    ) == [("truncated",)]
    broken.write_bytes(jpeg_bytes(seed=7))
    ingester.ingest(DropRef.folder("samples"))
    assert ingested_samples.rows("SELECT count(*) FROM rejected_files")[0][0] == 0
    assert (
        ingested_samples.rows("SELECT count(*) FROM image_files WHERE path = 'samples/late.jpg'")[
            0
        ][0]
        == 1
    )


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_vanished_files_keep_their_rows_and_are_reported(ingested_samples, drop_root):
    (drop_root / "samples" / "rocket.jpg").unlink()
    report = DropIngestor(ingested_samples, drop_root).ingest(DropRef.folder("samples"))
    assert report.vanished_paths == ["samples/rocket.jpg"]
    assert (
        ingested_samples.rows("SELECT count(*) FROM image_files WHERE drop_id = 'samples'")[0][0]
        == 7
    )


def test_loose_drop_ingests_exactly_its_listed_files(warehouse, drop_root):
    for name in ("a.jpg", "b.jpg", "not-mine.jpg"):
        (drop_root / name).write_bytes(jpeg_bytes(seed=len(name) + ord(name[0])))
    drop = DropRef.loose("_loose-20260101T000000Z", ["a.jpg", "b.jpg", "../../etc/passwd"])
    report = DropIngestor(warehouse, drop_root).ingest(drop)
    assert report.files_seen == 3
    assert recorded_paths(warehouse, drop.drop_id) == ["../../etc/passwd", "a.jpg", "b.jpg"]
    assert warehouse.rows("SELECT path, reason FROM rejected_files") == [
        ("../../etc/passwd", "path_escape")
    ]


def test_small_batches_write_the_same_rows_as_one_batch(tmp_path, drop_root, sample_drop):
    one = Warehouse(tmp_path / "one.duckdb")
    many = Warehouse(tmp_path / "many.duckdb")
    DropIngestor(one, drop_root, IngestOptions(batch_size=1000)).ingest(DropRef.folder("samples"))
    DropIngestor(many, drop_root, IngestOptions(batch_size=2, workers=1)).ingest(
        DropRef.folder("samples")
    )
    query = "SELECT * EXCLUDE (ingested_at) FROM images ORDER BY ALL"
    assert one.query(query).equals(many.query(query))


def test_a_file_that_vanishes_before_hashing_is_rejected_as_unreadable(tmp_path):
    outcome = _hash(Outcome(SeenFile("x/gone.jpg", "x/gone.jpg", 100, 1)), tmp_path, DecodeLimits())
    assert outcome.problem is not None and outcome.problem.reason.value == "unreadable"


def test_files_over_the_byte_limit_are_too_large_without_being_read(
    warehouse, drop_root, sample_drop
):
    options = IngestOptions(limits=DecodeLimits(max_bytes=100_000))
    DropIngestor(warehouse, drop_root, options).ingest(DropRef.folder("samples"))
    assert warehouse.rows("SELECT path, reason, sha256 FROM rejected_files") == [
        ("samples/hubble_deep_field.jpg", "too_large", None)
    ]


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_a_crash_mid_drop_leaves_whole_batches_and_the_rerun_completes(
    warehouse, drop_root, sample_drop, monkeypatch: pytest.MonkeyPatch
):
    real_decode = ingest_module._decode
    calls = {"n": 0}

    def crash_on_fifth(outcome, limits):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real_decode(outcome, limits)

    monkeypatch.setattr(ingest_module, "_decode", crash_on_fifth)
    options = IngestOptions(batch_size=2, workers=1)
    with pytest.raises(KeyboardInterrupt):
        DropIngestor(warehouse, drop_root, options).ingest(DropRef.folder("samples"))
    assert warehouse.rows("SELECT count(*) FROM image_files")[0][0] == 4  # two whole batches
    monkeypatch.setattr(ingest_module, "_decode", real_decode)
    report = DropIngestor(warehouse, drop_root, options).ingest(DropRef.folder("samples"))
    assert (report.files_unchanged, report.files_processed) == (4, 3)
    assert warehouse.rows("SELECT count(*) FROM images")[0][0] == 7


def test_ingestion_reads_through_links_inside_the_drop_root(warehouse, drop_root, sample_drop):
    other = drop_root / "linked"
    other.mkdir()
    (other / "cat.jpg").symlink_to(sample_drop / "chelsea.jpg")
    shutil.copy2(sample_drop / "coffee.jpg", other / "coffee.jpg")
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("linked"))
    assert warehouse.rows("SELECT count(*) FROM image_files WHERE drop_id = 'linked'")[0][0] == 2


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_raising_a_limit_re_evaluates_too_large_rejections(warehouse, drop_root, sample_drop):
    small = IngestOptions(limits=DecodeLimits(max_bytes=100_000))
    DropIngestor(warehouse, drop_root, small).ingest(DropRef.folder("samples"))
    assert warehouse.rows("SELECT count(*) FROM rejected_files")[0][0] == 1
    again = DropIngestor(warehouse, drop_root, small).ingest(DropRef.folder("samples"))
    assert again.files_unchanged == 7  # same limits: the verdict stands without a read
    raised = DropIngestor(warehouse, drop_root).ingest(DropRef.folder("samples"))
    assert raised.files_processed == 1
    assert warehouse.rows("SELECT count(*) FROM rejected_files")[0][0] == 0
    assert warehouse.rows(
        "SELECT count(*) FROM image_files WHERE path = 'samples/hubble_deep_field.jpg'"
    ) == [(1,)]


def test_the_pixel_limit_that_applied_is_recorded_and_re_evaluated(
    warehouse, drop_root, sample_drop
):
    tight = IngestOptions(limits=DecodeLimits(max_pixels=300_000))
    DropIngestor(warehouse, drop_root, tight).ingest(DropRef.folder("samples"))
    rejected = warehouse.rows("SELECT count(*), min(limits) FROM rejected_files")[0]
    assert rejected[0] >= 1 and "max_pixels=300000" in rejected[1]
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("samples"))
    assert warehouse.rows("SELECT count(*) FROM rejected_files")[0][0] == 0
