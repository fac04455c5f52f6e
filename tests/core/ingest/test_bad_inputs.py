"""Awkward files: none crashes ingestion, none is lost, each gets the outcome it deserves."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from core.ingest.accounting import account_for_drop
from core.ingest.ingest import DropIngestor
from core.ingest.scan import DropRef
from core.warehouse import Warehouse
from tests.fixtures.bad_inputs import DROP, Expect, build_corpus, make_unreadable


@pytest.fixture
def corpus(tmp_path: Path, drop_root: Path) -> dict[str, Expect]:
    outside = tmp_path / "outside"
    outside.mkdir()
    return build_corpus(drop_root, outside)


@pytest.fixture
def ingested(corpus: dict[str, Expect], warehouse: Warehouse, drop_root: Path) -> Warehouse:
    report = DropIngestor(warehouse, drop_root).ingest(DropRef.folder(DROP))
    assert report.files_seen == len(corpus)
    return warehouse


def _outcome(warehouse: Warehouse, path: str) -> dict:
    files = warehouse.query(
        "SELECT i.mode, i.width, i.height, i.notes, i.frame_count, f.is_duplicate"
        " FROM image_files f JOIN images i USING (image_id) WHERE f.drop_id = ? AND f.path = ?",
        [DROP, path],
    )
    rejected = warehouse.query(
        "SELECT reason, error FROM rejected_files WHERE drop_id = ? AND path = ?", [DROP, path]
    )
    assert files.height + rejected.height == 1, f"{path!r} must have exactly one row"
    return files.row(0, named=True) if files.height else rejected.row(0, named=True)


def test_every_file_is_accounted_for_exactly_once(corpus, ingested):
    accounting = account_for_drop(ingested, DROP, sorted(corpus))
    assert accounting.balanced
    assert accounting.files_seen == len(corpus)


def _cases() -> list:
    """One test case per kind of file, named by the kind."""
    with tempfile.TemporaryDirectory() as scratch:
        root, outside = Path(scratch, "drops"), Path(scratch, "outside")
        root.mkdir()
        outside.mkdir()
        return [
            pytest.param(path, id=expect.kind)
            for path, expect in build_corpus(root, outside).items()
        ]


@pytest.mark.parametrize("path", _cases())
def test_file_kind_gets_its_outcome(path: str, corpus, ingested):
    expect = corpus[path]
    row = _outcome(ingested, path)
    if expect.reason is not None:
        assert row["reason"] == expect.reason, row["error"]
        assert row["error"], "a rejection always carries the error text"
        return
    assert row["mode"] == expect.mode
    assert (row["width"], row["height"]) == expect.size
    assert row["frame_count"] == expect.frame_count
    if expect.note:
        assert any(expect.note in note for note in row["notes"]), row["notes"]


def test_duplicate_bytes_share_one_image(ingested):
    rows = ingested.rows(
        "SELECT path, is_duplicate FROM image_files WHERE drop_id = ? AND image_id ="
        " (SELECT image_id FROM image_files WHERE path = ?) ORDER BY path",
        [DROP, f"{DROP}/semi;colon.jpg"],
    )
    assert rows == [(f"{DROP}/copy_of_semicolon.jpg", False), (f"{DROP}/semi;colon.jpg", True)]


def test_exif_capture_time_is_recorded(ingested):
    (captured,) = ingested.rows(
        "SELECT captured_at FROM images JOIN image_files USING (image_id) WHERE path = ?",
        [f"{DROP}/rotated.jpg"],
    )[0]
    assert captured.isoformat() == "2024-05-06T07:08:09"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_rejected_as_unreadable(corpus, warehouse, drop_root):
    path = make_unreadable(drop_root)
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder(DROP))
    assert _outcome(warehouse, path)["reason"] == "unreadable"


def test_second_run_over_the_corpus_changes_nothing(corpus, ingested, drop_root):
    tables = ("images", "image_files", "rejected_files", "drops")
    before = {t: ingested.query(f"SELECT * FROM {t} ORDER BY ALL") for t in tables}
    DropIngestor(ingested, drop_root).ingest(DropRef.folder(DROP))
    for table in tables:
        assert ingested.query(f"SELECT * FROM {table} ORDER BY ALL").equals(before[table]), table
