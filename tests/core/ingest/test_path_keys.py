"""Row keys (`path`) are unique for distinct file names, and `nothing_lost` counts entries."""

from __future__ import annotations

import os
from pathlib import Path

from core.copies import image_copies
from core.files import read_image_copy, sha256_hex
from core.ingest.accounting import account_for_drop
from core.ingest.ingest import DropIngestor, recorded_paths
from core.ingest.scan import DropRef, display_path
from core.warehouse import Warehouse
from tests.fixtures.bad_inputs import jpeg_bytes


def test_a_raw_byte_name_and_its_escaped_spelling_get_distinct_rows(
    drop_root: Path, warehouse: Warehouse
):
    folder = drop_root / "d"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/\xff.jpg"
    with open(raw, "wb") as handle:
        handle.write(jpeg_bytes(seed=1))
    (folder / "\\xff.jpg").write_bytes(jpeg_bytes(seed=2))
    report = DropIngestor(warehouse, drop_root).ingest(DropRef.folder("d"))
    paths = [p for (p,) in warehouse.rows("SELECT path FROM image_files ORDER BY path")]
    assert len(paths) == 2 and len(set(paths)) == 2
    accounting = account_for_drop(warehouse, "d", report.seen_paths, report.seen_entries)
    assert accounting.balanced and accounting.files_seen == 2


def test_nothing_lost_counts_directory_entries_not_the_writers_keys(warehouse: Warehouse):
    # Two distinct entries whose keys collide, one row: a file was lost and the check says so.
    with warehouse.transaction() as conn:
        conn.execute(
            "INSERT INTO rejected_files (drop_id, path, reason, error, rejected_at)"
            " VALUES ('d', 'd/x', 'empty', 'e', now())"
        )
    accounting = account_for_drop(warehouse, "d", ["d/x", "d/x"], ["d/x", "d/\udcffx"])
    assert accounting.files_seen == 2
    assert not accounting.balanced


def test_keys_are_readable_for_plain_names_and_injective_for_the_rest():
    assert display_path("d/photo é.jpg") == "d/photo é.jpg"
    names = ["d/\udcff.jpg", "d/\\xff.jpg", "d/\\\\xff.jpg", "d/\\.jpg", "d/\\\\.jpg"]
    assert len({display_path(n) for n in names}) == len(names)


def test_models_open_a_file_by_its_real_name_not_its_escaped_key(
    drop_root: Path, warehouse: Warehouse
):
    """A backslash, a non-UTF-8 byte, and a sibling whose real name is the other's key."""
    folder = drop_root / "d"
    folder.mkdir()
    (folder / "win\\path.jpg").write_bytes(jpeg_bytes(seed=1))
    with open(os.fsencode(folder) + b"/\xff.jpg", "wb") as handle:
        handle.write(jpeg_bytes(seed=2))
    (folder / "\\xff.jpg").write_bytes(jpeg_bytes(seed=3))  # named like the raw file's key
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("d"))
    rows = warehouse.rows("SELECT image_id, path FROM image_files ORDER BY path")
    assert len(rows) == 3
    copies = image_copies(warehouse, "d", [image_id for image_id, _ in rows])
    for image_id, path in rows:
        key, data = read_image_copy(drop_root, image_id, copies[image_id])
        assert key == path and sha256_hex(data) == image_id
    assert warehouse.rows(
        "SELECT count(*) FROM image_files WHERE vanished_at IS NOT NULL OR changed_at IS NOT NULL"
    ) == [(0,)]


def test_a_loose_drop_rerun_by_hand_finds_its_odd_names_again(
    drop_root: Path, warehouse: Warehouse
):
    (drop_root / "a\\b.jpg").write_bytes(jpeg_bytes(seed=4))
    with open(os.fsencode(drop_root) + b"/\xfe.jpg", "wb") as handle:
        handle.write(jpeg_bytes(seed=5))
    files = sorted(["a\\b.jpg", os.fsdecode(b"\xfe.jpg")])
    DropIngestor(warehouse, drop_root).ingest(DropRef.loose("_loose-x", files))
    assert sorted(recorded_paths(warehouse, "_loose-x")) == files


def test_a_row_recorded_before_real_names_were_kept_gains_its_name_on_the_next_run(
    drop_root: Path, warehouse: Warehouse
):
    folder = drop_root / "d"
    folder.mkdir()
    (folder / "win\\path.jpg").write_bytes(jpeg_bytes(seed=6))
    (folder / "plain.jpg").write_bytes(jpeg_bytes(seed=7))
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("d"))
    with warehouse.transaction() as conn:  # as migration 2112 leaves an older row
        conn.execute("UPDATE image_files SET os_path = NULL")
    report = DropIngestor(warehouse, drop_root).ingest(DropRef.folder("d"))
    assert (report.files_processed, report.files_unchanged) == (1, 1)  # only the escaped key
    assert warehouse.rows("SELECT path, os_path FROM image_files ORDER BY path") == [
        ("d/plain.jpg", None),
        ("d/win\\\\path.jpg", b"d/win\\path.jpg"),
    ]
