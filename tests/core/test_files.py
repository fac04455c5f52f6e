"""`core.files`: the safe open every stage uses (beneath the root, never blocking, read once)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from core.files import (
    FileMissingError,
    FileTooLargeError,
    ImageUnreadable,
    NotRegularFileError,
    PathEscapeError,
    read_drop_file,
    read_image_copy,
)


def _read_in_thread(root: Path, relative: str) -> BaseException | bytes | None:
    """Run the read with a timeout; a FIFO that blocks is unblocked by opening its write end."""
    outcome: list[BaseException | bytes] = []

    def target() -> None:
        try:
            outcome.append(read_drop_file(root, relative).data)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():
        os.close(os.open(root / relative, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=5)
        return None
    return outcome[0]


def test_a_fifo_is_refused_without_blocking(drop_root: Path):
    os.mkfifo(drop_root / "pipe.jpg")
    result = _read_in_thread(drop_root, "pipe.jpg")
    assert result is not None, "the read blocked on a FIFO"
    assert isinstance(result, NotRegularFileError)


def test_links_are_followed_only_inside_the_root(tmp_path: Path, drop_root: Path):
    (drop_root / "d").mkdir()
    (drop_root / "d" / "a.jpg").write_bytes(b"inside")
    (tmp_path / "secret").write_bytes(b"outside")
    (drop_root / "rel").symlink_to("d/a.jpg")
    (drop_root / "d" / "up").symlink_to("../d/a.jpg")
    (drop_root / "abs").symlink_to(drop_root / "d" / "a.jpg")
    (drop_root / "out").symlink_to(tmp_path / "secret")
    (drop_root / "d" / "climb").symlink_to("../../secret")
    (drop_root / "dirlink").symlink_to(tmp_path)
    for name in ("rel", "d/up", "abs", "d/./a.jpg"):
        assert read_drop_file(drop_root, name).data == b"inside", name
    for name in (
        "out",
        "d/climb",
        "dirlink/secret",
        "../secret",
        "d/../../secret",
        "/etc/hostname",
    ):
        with pytest.raises(PathEscapeError):
            read_drop_file(drop_root, name)


def test_missing_folders_and_limits_raise_typed_errors(drop_root: Path):
    (drop_root / "big").write_bytes(b"x" * 100)
    (drop_root / "sub").mkdir()
    with pytest.raises(FileMissingError):
        read_drop_file(drop_root, "nothing.jpg")
    with pytest.raises(NotRegularFileError):
        read_drop_file(drop_root, "sub")
    with pytest.raises(FileTooLargeError):
        read_drop_file(drop_root, "big", max_bytes=10)


def test_the_first_copy_that_still_hashes_right_is_read(drop_root: Path):
    good = b"the image bytes"
    image_id = hashlib.sha256(good).hexdigest()
    (drop_root / "changed.jpg").write_bytes(b"edited since")
    (drop_root / "copy.jpg").write_bytes(good)
    assert read_image_copy(drop_root, image_id, ["gone.jpg", "changed.jpg", "copy.jpg"]) == (
        "copy.jpg",
        good,
    )
    with pytest.raises(ImageUnreadable) as changed:
        read_image_copy(drop_root, image_id, ["gone.jpg", "changed.jpg"])
    assert changed.value.status == "changed_since_ingest"
    assert changed.value.changed == ["changed.jpg"]
    with pytest.raises(ImageUnreadable) as gone:
        read_image_copy(drop_root, image_id, ["gone.jpg"])
    assert gone.value.status == "unavailable"
