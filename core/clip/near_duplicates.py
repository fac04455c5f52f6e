"""Near-duplicate images: pairs of different images whose embeddings are almost the same.

One SQL join in DuckDB (vectorised `array_cosine_similarity`, no Python loop over pairs): each
image of the drop against every other embedded image of the same model, in earlier drops or in
this one. Re-encoded, resized or re-saved copies have different bytes (so a different image_id)
but a cosine close to 1.

The join costs (drop x stored) pair comparisons, about 0.45 M pairs/s on 2 cores: fine for small
warehouses, hours for a 10,000-image drop against 1M stored images. Above `SQL_MAX_PAIRS` the
question goes to the vector index beside the warehouse (`core.search.index`, updated here with
the drop's vectors): a range search at `threshold - INDEX_MARGIN` on the quantised index proposes
candidates, and each candidate's cosine is recomputed exactly from the warehouse, so every
reported pair and cosine is exact; a pair can only be missed if the index does not probe the
cell it sits in (recall is measured in benchmarks/search.py).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

from core.clip.store import drop_images, has_table, read_embeddings, table_for
from core.search.index import DEFAULT_NPROBE, VectorIndex
from core.warehouse import Warehouse

DEFAULT_THRESHOLD = 0.98
SQL_MAX_PAIRS = 5_000_000  # about 10 s of the SQL join; above, the index answers
INDEX_MARGIN = 0.02  # > the 8-bit codes' error on a cosine (about 1e-3)
Method = Literal["auto", "sql", "index"]


def near_duplicate_pairs(
    warehouse: Warehouse,
    drop_id: str,
    *,
    model_id: str,
    dim: int,
    kind: str = "global",
    threshold: float = DEFAULT_THRESHOLD,
    limit: int | None = None,
    method: Method = "auto",
    nprobe: int = DEFAULT_NPROBE,
) -> pl.DataFrame:
    """Pairs (image_id, other_image_id, cosine) with cosine >= threshold, most similar first.

    Each unordered pair inside the drop appears once; `other_in_drop` says whether the other image
    belongs to this drop or only to earlier (or other) drops. `method`: `sql` (the exact join),
    `index` (the vector index, exact cosines) or `auto` (`sql` up to `SQL_MAX_PAIRS` pairs).
    """
    if method not in ("auto", "sql", "index"):
        raise ValueError(f"method must be auto, sql or index, not {method!r}")
    if not has_table(warehouse, dim):
        return _EMPTY
    index = VectorIndex(warehouse, model_id, kind, dim)
    if method == "auto":
        in_drop = len(drop_images(warehouse, drop_id))
        method = "sql" if in_drop * index.stored_count() <= SQL_MAX_PAIRS else "index"
    if method == "index":
        frame = _index_pairs(index, drop_id, threshold, nprobe)
        return frame.head(limit) if limit is not None else frame
    table = table_for(dim)
    frame = warehouse.query(
        f"""
        WITH part AS (SELECT DISTINCT image_id FROM image_files WHERE drop_id = $drop),
        cur AS (
            SELECT e.image_id, e.embedding::FLOAT[{dim}] AS embedding FROM {table} e JOIN part USING (image_id)
            WHERE e.model_id = $model AND e.kind = $kind
        ),
        other AS (
            SELECT e.image_id, e.embedding::FLOAT[{dim}] AS embedding, p.image_id IS NOT NULL AS in_drop
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
    return frame if frame.height else _EMPTY


_EMPTY = pl.DataFrame(
    schema={
        "image_id": pl.String,
        "other_image_id": pl.String,
        "cosine": pl.Float64,
        "other_in_drop": pl.Boolean,
    }
)


def _index_pairs(index: VectorIndex, drop_id: str, threshold: float, nprobe: int) -> pl.DataFrame:
    """The same pairs as the SQL join, from the index's candidates, with exact cosines."""
    index.sync()
    warehouse = index.warehouse
    part = [image.image_id for image in drop_images(warehouse, drop_id)]
    ids, vectors = read_embeddings(warehouse, index.dim, index.model_id, index.kind, part)
    if not ids:
        return _EMPTY
    in_drop = set(ids)
    candidates = index.range_search(vectors, threshold - INDEX_MARGIN, nprobe=nprobe)
    found = {
        (min(image_id, other), max(image_id, other)) if other in in_drop else (image_id, other)
        for image_id, others in zip(ids, candidates, strict=True)
        for other in others
        if other != image_id
    }  # an in-drop pair found from either side counts once
    pairs = sorted(found)
    if not pairs:
        return _EMPTY
    others = sorted({other for _, other in pairs} - in_drop)
    other_ids, other_vectors = read_embeddings(
        warehouse, index.dim, index.model_id, index.kind, others
    )
    row = {image_id: i for i, image_id in enumerate(ids)}
    other_row = {image_id: i for i, image_id in enumerate(other_ids)}

    def unit(matrix: np.ndarray) -> np.ndarray:
        matrix = matrix.astype(np.float64)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)

    mine, theirs = unit(vectors), unit(other_vectors) if len(other_ids) else None
    kept = []
    for image_id, other in pairs:
        if other in in_drop:
            cosine = float(mine[row[image_id]] @ mine[row[other]])
        elif other in other_row and theirs is not None:
            cosine = float(mine[row[image_id]] @ theirs[other_row[other]])
        else:
            continue  # removed since the index was read
        if cosine >= threshold:
            kept.append((image_id, other, cosine, other in in_drop))
    if not kept:
        return _EMPTY
    frame = pl.DataFrame(kept, schema=_EMPTY.schema, orient="row")
    return frame.sort(["cosine", "image_id", "other_image_id"], descending=[True, False, False])
