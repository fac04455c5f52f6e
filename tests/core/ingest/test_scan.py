"""Which entries of the drop root make up a drop."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.ingest.scan import DropRef, InvalidDrop, scan_drop


def test_hidden_entries_and_the_ready_marker_are_not_part_of_a_drop(drop_root: Path):
    folder = drop_root / "d"
    (folder / ".thumbnails").mkdir(parents=True)
    (folder / ".thumbnails" / "x.jpg").write_bytes(b"x")
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / "_READY").write_bytes(b"")
    (folder / "sub").mkdir()
    (folder / "sub" / "_READY").write_bytes(b"")  # only the top-level marker is special
    (folder / "a.jpg").write_bytes(b"x")
    assert [f.path for f in scan_drop(drop_root, DropRef.folder("d"))] == [
        "d/a.jpg",
        "d/sub/_READY",
    ]


@pytest.mark.parametrize(
    "drop_id", ["", ".", "..", "../etc", "a/b", ".hidden", "a...b", "tab\there"]
)
def test_partition_keys_that_are_not_a_folder_name_are_refused(drop_root: Path, drop_id: str):
    with pytest.raises(InvalidDrop):
        scan_drop(drop_root, DropRef.folder(drop_id))


def test_a_drop_folder_that_is_a_link_out_of_the_root_is_refused(tmp_path: Path, drop_root: Path):
    (drop_root / "elsewhere").symlink_to(tmp_path)
    with pytest.raises(InvalidDrop):
        scan_drop(drop_root, DropRef.folder("elsewhere"))


def test_a_linked_sub_folder_is_recorded_not_followed(tmp_path: Path, drop_root: Path):
    folder = drop_root / "d"
    folder.mkdir()
    (folder / "inside").symlink_to(drop_root)
    (folder / "outside").symlink_to(tmp_path)
    seen = {
        f.path: f.problem.reason.value
        for f in scan_drop(drop_root, DropRef.folder("d"))
        if f.problem
    }
    assert seen == {"d/inside": "not_a_regular_file", "d/outside": "path_escape"}
