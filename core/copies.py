"""Which files of an image a model stage may read, and what it found when it tried.

An image (content hash) can have several files, in several drops. A stage tries them in order
(this drop's present files first, then other drops', then files last seen gone, which may be
back) and reads the first whose bytes still hash to the image id (`core.files.read_image_copy`).
What it learns is written back: a missing file gets `vanished_at`, a file whose bytes changed
(or that is no regular file any more) gets `changed_at`, so the next ingestion re-hashes it.
An image with no usable copy left is "unreadable" and is retried only once an ingestion has
recorded a usable file for it again (`USABLE_COPY`), not on every run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from core.files import FileCopy, ImageUnreadable
from core.warehouse import Warehouse

UNREADABLE_STATUSES = ("unavailable", "changed_since_ingest")

# SQL: does image `{image_id}` have a file that ingestion vouches for (present, unchanged)?
USABLE_COPY = (
    "EXISTS (SELECT 1 FROM image_files u WHERE u.image_id = {image_id}"
    " AND u.vanished_at IS NULL AND u.changed_at IS NULL)"
)


def image_copies(
    warehouse: Warehouse, drop_id: str, image_ids: Sequence[str]
) -> dict[str, list[FileCopy]]:
    """Every recorded file of each image (key and real name), in the order a stage should try
    them."""
    if not image_ids:
        return {}
    with warehouse.reader() as conn:
        conn.register(
            "wanted_copies", pa.table({"image_id": pa.array(list(image_ids), pa.string())})
        )
        try:
            rows = conn.execute(
                """
                SELECT f.image_id, f.path, any_value(f.os_path)
                FROM image_files f JOIN wanted_copies USING (image_id)
                GROUP BY f.image_id, f.path
                ORDER BY f.image_id,
                         bool_or(f.vanished_at IS NOT NULL OR f.changed_at IS NOT NULL),
                         NOT bool_or(f.drop_id = ?), f.path
                """,
                [drop_id],
            ).fetchall()
        finally:
            conn.unregister("wanted_copies")
    copies: dict[str, list[FileCopy]] = {image_id: [] for image_id in image_ids}
    for image_id, path, raw in rows:
        relative = path if raw is None else os.fsdecode(bytes(raw))
        copies[image_id].append(FileCopy(path, relative))
    return copies


def record_unreadable(conn: duckdb.DuckDBPyConnection, failures: Sequence[ImageUnreadable]) -> None:
    """Mark what the stage found at each tried path (inside the caller's transaction)."""
    now = datetime.now(UTC)
    for failure in failures:
        for path in failure.missing:
            conn.execute(
                "UPDATE image_files SET vanished_at = ? WHERE image_id = ? AND path = ?",
                [now, failure.image_id, path],
            )
        for path in failure.changed:
            conn.execute(
                "UPDATE image_files SET changed_at = ? WHERE image_id = ? AND path = ?",
                [now, failure.image_id, path],
            )
