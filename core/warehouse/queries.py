"""Queries many stages repeat, written once: a drop's images (with one path each) and whether a
table exists, and where images were first seen. Fragments take the drop as the named parameter `$drop`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import duckdb

from core.warehouse.connection import Warehouse

# The distinct images of a drop (a file seen twice in the drop is one image).
DROP_IMAGES = "SELECT DISTINCT image_id FROM image_files WHERE drop_id = $drop"
# ... each with one of its files: the smallest path, so the choice is stable across runs.
DROP_IMAGE_PATHS = (
    "SELECT image_id, min(path) AS path FROM image_files WHERE drop_id = $drop GROUP BY image_id"
)


def table_exists(db: Warehouse | duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether `table` (or a view of that name) exists; False for a warehouse file not created yet."""
    sql = "SELECT count(*) FROM information_schema.tables WHERE table_name = ?"
    if isinstance(db, Warehouse):
        if not db.path.exists():
            return False
        return bool(db.rows(sql, [table])[0][0])
    row = db.execute(sql, [table]).fetchone()
    return bool(row and row[0])


def drop_image_paths(
    db: Warehouse | duckdb.DuckDBPyConnection,
    drop_id: str,
    *,
    order_by: Literal["path", "image_id"] = "path",
) -> list[tuple[str, str]]:
    """`(image_id, path)` of every distinct image of the drop, its smallest path as `path`."""
    sql = f"SELECT image_id, path FROM ({DROP_IMAGE_PATHS}) ORDER BY {order_by}, image_id"
    params = {"drop": drop_id}
    if isinstance(db, Warehouse):
        return [(str(i), str(p)) for i, p in db.rows(sql, params)]
    return [(str(i), str(p)) for i, p in db.execute(sql, params).fetchall()]


def first_paths(db: Warehouse, image_ids: Sequence[str]) -> dict[str, str]:
    """image_id -> the path it was first seen at (`images.first_path`), for those that exist."""
    if not image_ids:
        return {}
    rows = db.rows(
        "SELECT image_id, first_path FROM images WHERE list_contains(?, image_id)",
        [list(image_ids)],
    )
    return {str(i): str(p) for i, p in rows}
