"""Row keys (`path`) are unique for distinct file names, and `nothing_lost` counts entries."""

from __future__ import annotations

import os
from pathlib import Path

from core.ingest.accounting import account_for_drop
from core.ingest.ingest import DropIngestor
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
