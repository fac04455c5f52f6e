"""What the `images` asset shows after a drop's ingest: totals and small previews of the rows."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from core.ingest.reasons import clean_error
from core.warehouse import Warehouse


@dataclass(frozen=True)
class DropRows:
    images_total: int  # rows of `images`, every drop
    image_files: int  # rows of `image_files` of this drop
    rejected_files: int  # rows of `rejected_files` of this drop
    preview: pl.DataFrame  # the drop's first files by path, with their image's columns
    rejected_preview: pl.DataFrame  # the drop's rejected files present now, by path


def drop_rows(
    warehouse: Warehouse, drop_id: str, *, preview_rows: int = 20, rejected_rows: int = 100
) -> DropRows:
    """Counts and previews of one drop's ingest rows, read in one connection: the first
    `rejected_rows` rejected files by path, each named with its reason and a clean message."""
    with warehouse.reader() as conn:
        preview = conn.sql(
            """
            SELECT f.path, i.format, i.width, i.height, i.mode, f.is_duplicate, i.captured_at,
                   i.notes
            FROM image_files f JOIN images i USING (image_id)
            WHERE f.drop_id = ? ORDER BY f.path LIMIT ?
            """,
            params=[drop_id, preview_rows],
        ).pl()
        rejected = conn.sql(
            "SELECT path, reason, error FROM rejected_files WHERE drop_id = ?"
            " AND vanished_at IS NULL ORDER BY path LIMIT ?",
            params=[drop_id, rejected_rows],
        ).pl()
        totals = conn.execute(
            "SELECT (SELECT count(*) FROM images),"
            " (SELECT count(*) FROM image_files WHERE drop_id = $d),"
            " (SELECT count(*) FROM rejected_files WHERE drop_id = $d)",
            {"d": drop_id},
        ).fetchone() or (0, 0, 0)
    rejected = rejected.with_columns(
        pl.col("error").map_elements(clean_error, return_dtype=pl.String)
    )
    return DropRows(int(totals[0]), int(totals[1]), int(totals[2]), preview, rejected)
