"""No path leaves the drop root and no open blocks, in the scan and when ingestion reads."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from core.ingest.ingest import DropIngestor
from core.ingest.scan import DropRef, scan_drop
from core.warehouse import Warehouse
from tests.conftest import SAMPLES

SAMPLE = sorted(SAMPLES.glob("*.jpg"))[0]


def test_a_loose_file_behind_a_linked_folder_outside_the_root_is_refused(
    tmp_path: Path, drop_root: Path, warehouse: Warehouse
):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(SAMPLE, outside / "secret.jpg")
    (drop_root / "link").symlink_to(outside)
    drop = DropRef.loose("_loose-x", ["link/secret.jpg"])
    [seen] = scan_drop(drop_root, drop)
    assert seen.problem is not None and seen.problem.reason.value == "path_escape"
    DropIngestor(warehouse, drop_root).ingest(drop)
    assert warehouse.rows("SELECT count(*) FROM images")[0][0] == 0
    assert warehouse.rows("SELECT path, reason FROM rejected_files") == [
        ("link/secret.jpg", "path_escape")
    ]


def test_a_loose_file_behind_a_linked_folder_inside_the_root_is_read(
    drop_root: Path, warehouse: Warehouse
):
    (drop_root / "real").mkdir()
    shutil.copy(SAMPLE, drop_root / "real" / "a.jpg")
    (drop_root / "alias").symlink_to("real")
    DropIngestor(warehouse, drop_root).ingest(DropRef.loose("_loose-y", ["alias/a.jpg"]))
    assert warehouse.rows("SELECT path FROM image_files") == [("alias/a.jpg",)]


def test_a_file_swapped_for_a_fifo_after_the_scan_does_not_block_ingestion(
    drop_root: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
):
    folder = drop_root / "d"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / "a.jpg")
    import core.ingest.ingest as ingest_module

    real_scan = ingest_module.scan_drop

    def scan_then_swap(root, drop):
        seen = real_scan(root, drop)
        (folder / "a.jpg").unlink()
        os.mkfifo(folder / "a.jpg")
        return seen

    monkeypatch.setattr(ingest_module, "scan_drop", scan_then_swap)
    done = threading.Event()
    thread = threading.Thread(
        target=lambda: (DropIngestor(warehouse, drop_root).ingest(DropRef.folder("d")), done.set()),
        daemon=True,
    )
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():  # unblock the reader so the test process can exit
        fd = os.open(folder / "a.jpg", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(timeout=5)
    assert done.is_set(), "ingestion blocked on a FIFO"
    assert warehouse.rows("SELECT path, reason FROM rejected_files") == [
        ("d/a.jpg", "not_a_regular_file")
    ]


def test_a_file_swapped_for_a_link_out_of_the_root_after_the_scan_is_not_read(
    tmp_path: Path, drop_root: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
):
    folder = drop_root / "d"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"placeholder")
    outside = tmp_path / "secret.jpg"
    shutil.copy(SAMPLE, outside)
    import core.ingest.ingest as ingest_module

    real_scan = ingest_module.scan_drop

    def scan_then_swap(root, drop):
        seen = real_scan(root, drop)
        (folder / "a.jpg").unlink()
        (folder / "a.jpg").symlink_to(outside)
        return seen

    monkeypatch.setattr(ingest_module, "scan_drop", scan_then_swap)
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("d"))
    assert warehouse.rows("SELECT count(*) FROM images")[0][0] == 0
    assert warehouse.rows("SELECT path, reason FROM rejected_files") == [("d/a.jpg", "path_escape")]
