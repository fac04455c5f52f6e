"""The drop page reads files the way the models do: beneath the root, never blocking, and only
bytes that hash to the image id; it names every rejected file with a clean reason."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from core.ingest.ingest import DropIngestor
from core.ingest.scan import DropRef
from core.review.gallery import build_gallery
from core.warehouse import Warehouse
from tests.fixtures.bad_inputs import jpeg_bytes


def _ingest(warehouse: Warehouse, drop_root: Path, files: dict[str, bytes]) -> None:
    folder = drop_root / "d"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("d"))


def test_a_fifo_swapped_in_after_ingestion_does_not_hang_the_page(
    warehouse: Warehouse, drop_root: Path, tmp_path: Path
):
    _ingest(warehouse, drop_root, {"a.jpg": jpeg_bytes(seed=1), "b.jpg": jpeg_bytes(seed=2)})
    fifo = drop_root / "d" / "a.jpg"
    fifo.unlink()
    os.mkfifo(fifo)
    built: list[object] = []
    worker = threading.Thread(
        target=lambda: built.append(build_gallery(warehouse, drop_root, "d", tmp_path / "r")),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=20)
    hung = worker.is_alive()
    if hung:  # unblock the reader so the test process can end: a writer opens and leaves
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=20)
    assert not hung, "build_gallery blocked on a FIFO"
    (report,) = built
    assert report.thumbs_made == 1 and report.thumb_failures == 1


def test_a_file_edited_after_ingestion_gives_no_thumbnail_of_other_bytes(
    warehouse: Warehouse, drop_root: Path, tmp_path: Path
):
    _ingest(warehouse, drop_root, {"a.jpg": jpeg_bytes(seed=1)})
    ((image_id,),) = warehouse.rows("SELECT image_id FROM image_files")
    (drop_root / "d" / "a.jpg").write_bytes(jpeg_bytes(seed=7))  # other bytes, same path
    report = build_gallery(warehouse, drop_root, "d", tmp_path / "r")
    assert report.thumbs_made == 0 and report.thumb_failures == 1
    assert not (tmp_path / "r" / "thumbs" / f"{image_id}.jpg").exists()
    assert "changed_since_ingest" in report.page.read_text()


def test_the_page_names_each_rejected_file_with_its_reason_and_a_clean_message(
    warehouse: Warehouse, drop_root: Path, tmp_path: Path
):
    _ingest(
        warehouse,
        drop_root,
        {
            "good.jpg": jpeg_bytes(seed=1),
            "notes.jpg": b"a text file named like a photo\n",
            "empty.jpg": b"",
            "stalled.jpg": jpeg_bytes(width=320, height=240, seed=3)[:700],
        },
    )
    page = build_gallery(warehouse, drop_root, "d", tmp_path / "r").page.read_text()
    section = page[page.index("Rejected files") :]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", section)
    assert {(path, reason) for path, reason, _ in rows} == {
        ("d/empty.jpg", "empty"),
        ("d/notes.jpg", "not_an_image"),
        ("d/stalled.jpg", "truncated"),
    }
    for _, _, message in rows:
        assert message and " object at 0x" not in message and "<_io" not in message
    assert " object at 0x" not in page
