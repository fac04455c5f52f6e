"""Whether a warehouse changed since a moment, cheaply: the file's stat, or the lake's snapshot."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.warehouse.connection import Warehouse

STAMP_SETTLE_NS = 2_000_000_000  # a warehouse file written this recently: its stamp is not trusted


def file_stamp(path: Path) -> list | None:
    """(inode, size, mtime) of the warehouse file and its WAL, or None when one was written
    within STAMP_SETTLE_NS: a write in the same clock tick could leave a stamp unchanged (the
    "racily clean" case), so only settled files prove that nothing was committed since."""
    parts: list = []
    newest = 0
    for each in (path, path.with_name(path.name + ".wal")):
        try:
            info = each.stat()
        except FileNotFoundError:
            parts.append(None)
            continue
        parts.append([info.st_ino, info.st_size, info.st_mtime_ns])
        newest = max(newest, info.st_mtime_ns)
    if parts[0] is None or time.time_ns() - newest < STAMP_SETTLE_NS:
        return None
    return parts


def warehouse_stamp(warehouse: Warehouse) -> list | None:
    """The file's stamp (above) or, on the lake, its current snapshot id: every commit makes a
    new one, so equal stamps prove that nothing was committed in between."""
    return warehouse.stamp()
