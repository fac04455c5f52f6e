"""Near-duplicate images: pairs of different images whose embeddings are almost the same.

One SQL join in DuckDB (vectorised `array_cosine_similarity`, no Python loop over pairs): each
image of the drop against every other embedded image of the same model, in earlier drops or in
this one. Re-encoded, resized or re-saved copies have different bytes (so a different image_id)
but a cosine close to 1.
"""

from __future__ import annotations

import polars as pl

from core.clip.store import has_table, table_for
from core.warehouse import Warehouse

DEFAULT_THRESHOLD = 0.98


def near_duplicate_pairs(
    warehouse: Warehouse,
    drop_id: str,
    *,
    model_id: str,
    dim: int,
    kind: str = "global",
    threshold: float = DEFAULT_THRESHOLD,
    limit: int | None = None,
) -> pl.DataFrame:
    """Pairs (image_id, other_image_id, cosine) with cosine >= threshold, most similar first.

    Each unordered pair inside the drop appears once; `other_in_drop` says whether the other image
    belongs to this drop or only to earlier (or other) drops.
    """
    empty = pl.DataFrame(
        schema={
            "image_id": pl.String,
            "other_image_id": pl.String,
            "cosine": pl.Float64,
            "other_in_drop": pl.Boolean,
        }
    )
    if not has_table(warehouse, dim):
        return empty
    table = table_for(dim)
    frame = warehouse.query(
        f"""
        WITH part AS (SELECT DISTINCT image_id FROM image_files WHERE drop_id = $drop),
        cur AS (
            SELECT e.image_id, e.embedding FROM {table} e JOIN part USING (image_id)
            WHERE e.model_id = $model AND e.kind = $kind
        ),
        other AS (
            SELECT e.image_id, e.embedding, p.image_id IS NOT NULL AS in_drop
            FROM {table} e LEFT JOIN part p USING (image_id)
            WHERE e.model_id = $model AND e.kind = $kind
        )
        SELECT c.image_id, o.image_id AS other_image_id,
               array_cosine_similarity(c.embedding, o.embedding)::DOUBLE AS cosine,
               o.in_drop AS other_in_drop
        FROM cur c JOIN other o
          ON c.image_id <> o.image_id AND (NOT o.in_drop OR c.image_id < o.image_id)
        WHERE array_cosine_similarity(c.embedding, o.embedding) >= $threshold
        ORDER BY cosine DESC, c.image_id, other_image_id
        LIMIT $limit
        """,
        {
            "drop": drop_id,
            "model": model_id,
            "kind": kind,
            "threshold": threshold,
            "limit": limit if limit is not None else 2**62,
        },
    )
    return frame if frame.height else empty
