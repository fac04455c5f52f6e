"""Queries many stages repeat, written once: a drop's images (with one path each) and whether a
table exists, and where images were first seen. Fragments take the drop as the named parameter `$drop`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import duckdb

from core.warehouse.connection import Warehouse

# The distinct images of a drop (a file seen twice in the drop is one image).
DROP_IMAGES = "SELECT DISTINCT image_id FROM image_files WHERE drop_id = $drop"
# ... each with one of its files: the smallest path, so the choice is stable across runs.
DROP_IMAGE_PATHS = (
    "SELECT image_id, min(path) AS path FROM image_files WHERE drop_id = $drop GROUP BY image_id"
)


class Rows(Protocol):
    """Anything that runs a query and returns its rows: a `Warehouse`, or one open reader."""

    def rows(self, sql: str, params: Any = None) -> list[tuple]: ...


Source = Warehouse | Rows | duckdb.DuckDBPyConnection


def _rows(db: Source, sql: str, params: Any) -> list[tuple]:
    if isinstance(db, duckdb.DuckDBPyConnection):
        return db.execute(sql, params).fetchall()
    return db.rows(sql, params)


def is_lake(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether `conn` works in a DuckLake catalog (no fixed-size arrays, no keys there)."""
    row = conn.execute(
        "SELECT type FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return bool(row) and row[0] == "ducklake"


def table_exists(db: Source, table: str) -> bool:
    """Whether `table` (or a view of that name) exists; False for a warehouse file not created yet."""
    if isinstance(db, Warehouse) and not db.exists():
        return False
    sql = (
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?"
        " AND table_catalog = current_database()"
    )
    return bool(_rows(db, sql, [table])[0][0])


def drop_image_paths(
    db: Source,
    drop_id: str,
    *,
    order_by: Literal["path", "image_id"] = "path",
) -> list[tuple[str, str]]:
    """`(image_id, path)` of every distinct image of the drop, its smallest path as `path`."""
    sql = f"SELECT image_id, path FROM ({DROP_IMAGE_PATHS}) ORDER BY {order_by}, image_id"
    return [(str(i), str(p)) for i, p in _rows(db, sql, {"drop": drop_id})]


def first_paths(db: Source, image_ids: Sequence[str]) -> dict[str, str]:
    """image_id -> the path it was first seen at (`images.first_path`), for those that exist."""
    if not image_ids:
        return {}
    rows = _rows(
        db,
        "SELECT image_id, first_path FROM images WHERE image_id IN (SELECT unnest(?::VARCHAR[]))",
        [list(image_ids)],
    )
    return {str(i): str(p) for i, p in rows}
