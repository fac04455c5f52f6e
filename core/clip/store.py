"""Embedding and zero-shot rows in the warehouse.

Physical layout: one table per embedding dimension, `clip_embeddings_d<D>`, whose `embedding`
column is `FLOAT[D]` on the DuckDB file (a `FLOAT[]` list on the lake, which has no fixed-size
arrays: cast it, `embedding::FLOAT[D]`, where an array function needs one), so `array_cosine_similarity(a.embedding, b.embedding)` works in plain SQL
and models of different dimensions coexist. The view `clip_embeddings` unions all of them (vector
as `FLOAT[]`) for listing and joining; it is rebuilt whenever a new dimension appears.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from core.copies import USABLE_COPY, record_unreadable
from core.files import ImageUnreadable
from core.warehouse import Warehouse
from core.warehouse.queries import (
    DROP_IMAGE_PATHS,
    DROP_IMAGES,
    drop_image_paths,
    is_lake,
    table_exists,
)

KINDS = ("global", "s2")
TABLE_PREFIX = "clip_embeddings_d"


def table_for(dim: int) -> str:
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"embedding dimension must be a positive int, not {dim!r}")
    return f"{TABLE_PREFIX}{dim}"


def embedding_tables(conn: duckdb.DuckDBPyConnection) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_name LIKE 'clip_embeddings_d%' AND table_type = 'BASE TABLE'"
        " ORDER BY table_name"
    ).fetchall()
    return [name for (name,) in rows if name[len(TABLE_PREFIX) :].isdigit()]


def ensure_table(conn: duckdb.DuckDBPyConnection, dim: int) -> str:
    """Create `clip_embeddings_d<dim>` and rebuild the `clip_embeddings` view if it is new."""
    table = table_for(dim)
    if table in embedding_tables(conn):
        return table
    # The lake has no fixed-size arrays: there the vector is a FLOAT[] list of `dim` values,
    # and queries cast it (`embedding::FLOAT[D]`, a no-op on the file) for the array functions.
    # Rows are unique by (image_id, model_id, kind): `write_embeddings` inserts with MERGE.
    vector = "FLOAT[]" if is_lake(conn) else f"FLOAT[{dim}]"
    conn.execute(
        f"""
        CREATE TABLE {table} (
            image_id   VARCHAR NOT NULL,
            model_id   VARCHAR NOT NULL,
            kind       VARCHAR NOT NULL,   -- 'global' or 's2'
            dim        INTEGER NOT NULL,
            embedding  {vector} NOT NULL,   -- L2-normalised
            created_at TIMESTAMPTZ NOT NULL
        )
        """
    )
    selects = [
        f"SELECT image_id, model_id, kind, dim, embedding::FLOAT[] AS embedding, created_at FROM {name}"
        for name in embedding_tables(conn)
    ]
    conn.execute("CREATE OR REPLACE VIEW clip_embeddings AS " + " UNION ALL ".join(selects))
    return table


def has_table(warehouse: Warehouse, dim: int) -> bool:
    return table_exists(warehouse, table_for(dim))


def _rows_for_ids(
    warehouse: Warehouse, image_ids: Sequence[str], sql: str, params: list
) -> list[tuple]:
    """Run `sql`, which joins the relation `wanted_ids(image_id)`: a hash join, not a list scan."""
    with warehouse.reader() as conn:
        conn.register("wanted_ids", pa.table({"image_id": pa.array(list(image_ids), pa.string())}))
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.unregister("wanted_ids")


@dataclass(frozen=True)
class DropImage:
    image_id: str
    path: str  # relative to the drop root


def drop_images(warehouse: Warehouse, drop_id: str) -> list[DropImage]:
    """The distinct images of a drop, each with one of its files (the first path)."""
    return [DropImage(image_id, path) for image_id, path in drop_image_paths(warehouse, drop_id)]


def unreadable_ids(warehouse: Warehouse, model_id: str, image_ids: Sequence[str]) -> set[str]:
    """Which of `image_ids` this model could not read and that still have no usable file:
    they are not tried again until an ingestion records one (see core/copies.py)."""
    if not image_ids or not warehouse.exists():
        return set()
    rows = _rows_for_ids(
        warehouse,
        image_ids,
        "SELECT c.image_id FROM clip_failures c JOIN wanted_ids USING (image_id)"
        f" WHERE c.model_id = ? AND NOT {USABLE_COPY.format(image_id='c.image_id')}",
        [model_id],
    )
    return {image_id for (image_id,) in rows}


def write_failures(
    conn: duckdb.DuckDBPyConnection,
    failures: Sequence[ImageUnreadable],
    *,
    model_id: str,
    drop_id: str,
) -> None:
    """Record images with no readable copy (inside the caller's transaction), and mark what was
    found at their paths so the next ingestion re-checks them."""
    if not failures:
        return
    now = datetime.now(UTC)
    latest = {f.image_id: f for f in failures}  # one source row per key for MERGE
    batch = pa.table(
        {
            "image_id": pa.array(list(latest), pa.string()),
            "status": pa.array([f.status for f in latest.values()], pa.string()),
            "error": pa.array([str(f) for f in latest.values()], pa.string()),
        }
    )
    conn.register("failure_batch", batch)
    try:
        conn.execute(
            "MERGE INTO clip_failures AS t USING (SELECT image_id, ?::VARCHAR AS model_id,"
            " status, error, ?::VARCHAR AS drop_id, ?::TIMESTAMPTZ AS created_at"
            " FROM failure_batch) AS s ON t.image_id = s.image_id AND t.model_id = s.model_id"
            " WHEN MATCHED THEN UPDATE SET status = s.status, error = s.error,"
            " drop_id = s.drop_id, created_at = s.created_at"
            " WHEN NOT MATCHED THEN INSERT BY NAME",
            [model_id, drop_id, now],
        )
    finally:
        conn.unregister("failure_batch")
    record_unreadable(conn, failures)


def clear_failures(
    conn: duckdb.DuckDBPyConnection, image_ids: Sequence[str], model_id: str
) -> None:
    """An image embedded after all (a copy came back) has no failure row any more."""
    if image_ids:
        conn.execute(
            "DELETE FROM clip_failures WHERE model_id = ? AND list_contains(?, image_id)",
            [model_id, list(image_ids)],
        )


def embedded_ids(
    warehouse: Warehouse, dim: int, model_id: str, kind: str, image_ids: Sequence[str]
) -> set[str]:
    """Which of `image_ids` already have an embedding of this model and kind."""
    if not image_ids or not has_table(warehouse, dim):
        return set()
    rows = _rows_for_ids(
        warehouse,
        image_ids,
        f"SELECT image_id FROM {table_for(dim)} JOIN wanted_ids USING (image_id)"
        " WHERE model_id = ? AND kind = ?",
        [model_id, kind],
    )
    return {image_id for (image_id,) in rows}


def write_embeddings(
    conn: duckdb.DuckDBPyConnection,
    image_ids: Sequence[str],
    vectors: np.ndarray,
    *,
    model_id: str,
    kind: str,
) -> int:
    """Insert one batch (inside the caller's transaction); existing rows are left as they are."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if len(image_ids) == 0:
        return 0
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError("embeddings contain NaN or infinite values")
    dim = int(vectors.shape[1])
    table = ensure_table(conn, dim)
    now = datetime.now(UTC)
    rows = pa.table(
        {
            "image_id": pa.array(list(image_ids), pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        }
    )
    conn.register("clip_batch", rows)
    try:
        inserted = conn.execute(
            f"MERGE INTO {table} AS t USING (SELECT DISTINCT ON (image_id) image_id,"
            " ?::VARCHAR AS model_id, ?::VARCHAR AS kind, ?::INTEGER AS dim, embedding,"
            " ?::TIMESTAMPTZ AS created_at FROM clip_batch) AS s"
            " ON t.image_id = s.image_id AND t.model_id = s.model_id AND t.kind = s.kind"
            " WHEN NOT MATCHED THEN INSERT BY NAME",
            [model_id, kind, dim, now],
        ).fetchall()
    finally:
        conn.unregister("clip_batch")
    return int(inserted[0][0]) if inserted else 0


def read_embeddings(
    warehouse: Warehouse, dim: int, model_id: str, kind: str, image_ids: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """(ids, (N, dim) float32) for those of `image_ids` that have an embedding."""
    if not image_ids or not has_table(warehouse, dim):
        return [], np.zeros((0, dim), dtype=np.float32)
    with warehouse.reader() as conn:
        conn.register("wanted_ids", pa.table({"image_id": pa.array(list(image_ids), pa.string())}))
        try:
            table = conn.sql(
                f"SELECT image_id, embedding FROM {table_for(dim)} JOIN wanted_ids USING (image_id)"
                " WHERE model_id = ? AND kind = ? ORDER BY image_id",
                params=[model_id, kind],
            ).to_arrow_table()
        finally:
            conn.unregister("wanted_ids")
    ids = table.column("image_id").to_pylist()
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return ids, flat.astype(np.float32).reshape(len(ids), dim)


def zero_shot_done(
    warehouse: Warehouse, model_id: str, label_set: str, fingerprint: str, image_ids: Sequence[str]
) -> set[str]:
    if not image_ids or not warehouse.exists():
        return set()
    rows = _rows_for_ids(
        warehouse,
        image_ids,
        "SELECT image_id FROM clip_zero_shot JOIN wanted_ids USING (image_id)"
        " WHERE model_id = ? AND label_set = ? AND label_set_fingerprint = ?",
        [model_id, label_set, fingerprint],
    )
    return {image_id for (image_id,) in rows}


def write_zero_shot(
    conn: duckdb.DuckDBPyConnection,
    image_ids: Sequence[str],
    probabilities: np.ndarray,
    *,
    labels: Sequence[str],
    model_id: str,
    label_set: str,
    fingerprint: str,
    decided: Sequence[Sequence[str]] | None = None,
) -> int:
    """Upsert one batch of per-image label probabilities (inside the caller's transaction);
    `decided`: a multi-label set's chosen values per image (`LabelSet.decide`), else NULL."""
    if len(image_ids) == 0:
        return 0
    top = probabilities.argmax(axis=1)
    rows = pa.table(
        {
            "image_id": pa.array(list(image_ids), pa.string()),
            "top_label": pa.array([labels[i] for i in top], pa.string()),
            "top_probability": pa.array(probabilities[np.arange(len(top)), top], pa.float64()),
            "probs": pa.array([row.tolist() for row in probabilities], pa.list_(pa.float64())),
            "decided": pa.array(
                [list(d) for d in decided] if decided is not None else [None] * len(top),
                pa.list_(pa.string()),
            ),
        }
    )
    conn.register("zero_shot_batch", rows)
    try:
        conn.execute(
            "MERGE INTO clip_zero_shot AS t USING (SELECT DISTINCT ON (image_id) image_id,"
            " ?::VARCHAR AS model_id, ?::VARCHAR AS label_set,"
            " ?::VARCHAR AS label_set_fingerprint, top_label, top_probability,"
            " MAP(?::VARCHAR[], probs) AS probabilities, ?::TIMESTAMPTZ AS created_at,"
            " decided AS labels FROM zero_shot_batch) AS s"
            " ON t.image_id = s.image_id AND t.model_id = s.model_id"
            " AND t.label_set = s.label_set"
            " WHEN MATCHED THEN UPDATE SET label_set_fingerprint = s.label_set_fingerprint,"
            " top_label = s.top_label, top_probability = s.top_probability,"
            " probabilities = s.probabilities, created_at = s.created_at, labels = s.labels"
            " WHEN NOT MATCHED THEN INSERT BY NAME",
            [model_id, label_set, fingerprint, list(labels), datetime.now(UTC)],
        ).fetchall()
    finally:
        conn.unregister("zero_shot_batch")
    return len(image_ids)


def embedding_preview(
    warehouse: Warehouse, drop_id: str, model_id: str, dim: int, *, rows: int = 20
) -> tuple[pl.DataFrame, int]:
    """The drop's first vectors by path (four values each) and the model's rows in all drops;
    empty before any vector of this size was written (every image of the drop unavailable)."""
    with warehouse.reader() as conn:
        if not table_exists(conn, table_for(dim)):
            return pl.DataFrame(), 0
        preview = conn.sql(
            f"""
            SELECT f.path, e.kind, e.dim, list_transform(e.embedding[1:4], lambda v: round(v, 3))::VARCHAR AS first_values, e.created_at
            FROM {table_for(dim)} e JOIN ({DROP_IMAGE_PATHS}) f USING (image_id)
            WHERE e.model_id = $model ORDER BY f.path, e.kind LIMIT $rows
            """,
            params={"drop": drop_id, "model": model_id, "rows": rows},
        ).pl()
        total = conn.execute(
            "SELECT count(*) FROM clip_embeddings WHERE model_id = ?", [model_id]
        ).fetchone()
    return preview, int(total[0]) if total else 0


def zero_shot_preview(
    warehouse: Warehouse, drop_id: str, model_id: str, *, rows: int = 20
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """The drop's top-label distribution per label set, its first rows by path, and the
    model's zero-shot rows in all drops."""
    params = {"drop": drop_id, "model": model_id}
    with warehouse.reader() as conn:
        distribution = conn.sql(
            f"""
            SELECT z.label_set, z.top_label, count(*) AS images,
                   round(avg(z.top_probability), 3) AS mean_p
            FROM clip_zero_shot z JOIN ({DROP_IMAGES}) USING (image_id)
            WHERE z.model_id = $model
            GROUP BY 1, 2 ORDER BY 1, 3 DESC
            """,
            params=params,
        ).pl()
        preview = conn.sql(
            f"""
            SELECT i.first_path AS path, z.label_set, z.top_label,
                   round(z.top_probability, 3) AS p, array_to_string(list_transform(map_entries(z.probabilities),
                       lambda e: e.key || '=' || round(e.value, 3)::VARCHAR), ', ') AS probabilities
            FROM clip_zero_shot z JOIN images i USING (image_id)
            JOIN ({DROP_IMAGES}) USING (image_id)
            WHERE z.model_id = $model
            ORDER BY path, z.label_set LIMIT $rows
            """,
            params={**params, "rows": rows},
        ).pl()
        total = conn.execute(
            "SELECT count(*) FROM clip_zero_shot WHERE model_id = ?", [model_id]
        ).fetchone()
    return distribution, preview, int(total[0]) if total else 0
