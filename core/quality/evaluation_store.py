"""The SQL of the evaluation: what it reads (predictions of labelled images, and a hash of them)
and what it writes (`evaluations`, `evaluation_inputs`), so the evaluation logic and the asset
hold none.

Every read joins the labelled image ids, registered as the table `labelled(image_id)`, so a
warehouse of a million images costs what its labelled images cost. The input hash is computed by
DuckDB over the rows a unit would read (`md5` of their ordered concatenation), without fetching
probabilities or vectors into Python.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from core.warehouse import Warehouse
from core.warehouse.queries import table_exists

INPUT_KEY = ("labelled_set", "field", "predictor", "model_id", "task")


def _query_labelled(
    warehouse: Warehouse, sql: str, ids: Sequence[str], params: Sequence[Any]
) -> list[tuple]:
    """Run `sql` with `ids` registered as the table `labelled(image_id)`."""
    with warehouse.reader() as conn:
        conn.register("labelled", pa.table({"image_id": pa.array(list(ids), type=pa.string())}))
        try:
            return conn.execute(sql, list(params)).fetchall()
        finally:
            conn.unregister("labelled")


# -- input hashes: (model_id, images, md5) per model -------------------------------------------


def zero_shot_hashes(warehouse: Warehouse, label_set: str, ids: Sequence[str]) -> list[tuple]:
    if not table_exists(warehouse, "clip_zero_shot"):
        return []
    return _query_labelled(
        warehouse,
        "SELECT model_id, count(*), md5(string_agg(image_id || '|' || label_set_fingerprint"
        " || '|' || top_label || '|' || CAST(probabilities AS VARCHAR) || '|'"
        " || coalesce(CAST(labels AS VARCHAR), ''), ',' ORDER BY image_id))"
        " FROM clip_zero_shot JOIN labelled USING (image_id) WHERE label_set = ?"
        " GROUP BY model_id ORDER BY model_id",
        ids,
        [label_set],
    )


def _confidence_join(warehouse: Warehouse, table: str, column: str) -> tuple[str, str, list[str]]:
    """A LEFT JOIN of the value's confidence (`vlm_field_confidence`), the column to read (NULL
    where the table or the row is missing) and the join's parameters."""
    if not table_exists(warehouse, "vlm_field_confidence"):
        return "", "NULL::DOUBLE", []
    join = (
        " LEFT JOIN vlm_field_confidence c ON c.image_id = t.image_id"
        " AND c.model_id = t.model_id AND c.task_fingerprint = t.task_fingerprint"
        " AND c.task = ? AND c.field = ?"
    )
    return join, "c.confidence", [table.removeprefix("task_"), column]


def vlm_hashes(warehouse: Warehouse, table: str, column: str, ids: Sequence[str]) -> list[tuple]:
    """Per model: labelled images with a value, and a hash of the values and their confidence."""
    if not table_exists(warehouse, table):
        return []
    join, confidence, params = _confidence_join(warehouse, table, column)
    return _query_labelled(
        warehouse,
        f"SELECT t.model_id, count(DISTINCT t.image_id), md5(string_agg(t.task_fingerprint"
        f" || '|' || t.image_id || '|' || coalesce(CAST(t.\"{column}\" AS VARCHAR), '')"
        f" || '|' || coalesce(CAST({confidence} AS VARCHAR), ''), ','"
        f' ORDER BY t.task_fingerprint, t.image_id)) FROM "{table}" t'
        f" JOIN labelled USING (image_id){join}"
        " GROUP BY t.model_id ORDER BY t.model_id",
        ids,
        params,
    )


def embedding_hashes(warehouse: Warehouse, kind: str, ids: Sequence[str]) -> list[tuple]:
    """Per model, the labelled images' vectors of `kind` (hashed by DuckDB's `hash`)."""
    return _query_labelled(
        warehouse,
        "SELECT model_id, count(*), md5(string_agg(image_id || '|' || CAST(hash(embedding)"
        " AS VARCHAR), ',' ORDER BY image_id)) FROM clip_embeddings JOIN labelled"
        " USING (image_id) WHERE kind = ? GROUP BY model_id ORDER BY model_id",
        ids,
        [kind],
    )


# -- predictions ------------------------------------------------------------------------------


def zero_shot_rows(
    warehouse: Warehouse, label_set: str, model_id: str, ids: Sequence[str]
) -> list[tuple[str, str, dict[str, float], list[str] | None]]:
    """(image_id, top_label, probabilities, decided multi-label set or None) of one model's
    zero-shot labels."""
    rows = _query_labelled(
        warehouse,
        "SELECT image_id, top_label, map_entries(probabilities), labels FROM clip_zero_shot"
        " JOIN labelled USING (image_id) WHERE label_set = ? AND model_id = ? ORDER BY image_id",
        ids,
        [label_set, model_id],
    )
    return [
        (image_id, top, {e["key"]: float(e["value"]) for e in entries or []}, decided)
        for image_id, top, entries, decided in rows
    ]


def vlm_rows(
    warehouse: Warehouse, table: str, column: str, model_id: str, ids: Sequence[str]
) -> list[tuple[str, str, object, float | None]]:
    """(task_fingerprint, image_id, value as stored: text, list, bool, number or None, its
    confidence or None) of one model's extractions."""
    join, confidence, params = _confidence_join(warehouse, table, column)
    return _query_labelled(
        warehouse,
        f'SELECT t.task_fingerprint, t.image_id, t."{column}", {confidence} FROM "{table}" t'
        f" JOIN labelled USING (image_id){join} WHERE t.model_id = ? ORDER BY 1, 2",
        ids,
        [*params, model_id],
    )


# -- stored state and results -----------------------------------------------------------------


def stored_inputs(warehouse: Warehouse, labelled_set: str) -> dict[tuple, str]:
    """(field, predictor, model_id, task) -> fingerprint of what was last evaluated."""
    if not table_exists(warehouse, "evaluation_inputs"):
        return {}
    rows = warehouse.rows(
        "SELECT field, predictor, model_id, task, fingerprint FROM evaluation_inputs"
        " WHERE labelled_set = ?",
        [labelled_set],
    )
    return {tuple(row[:4]): row[4] for row in rows}


def replace_results(
    warehouse: Warehouse,
    labelled_set: str,
    written: Sequence[tuple[tuple, str, int, Sequence[str], list[tuple]]],
    removed: Sequence[tuple[tuple, Sequence[str]]],
    *,
    run_id: str,
    at: dt.datetime,
) -> int:
    """Delete-then-insert per key, all in one transaction.

    `written`: (key, fingerprint, images, sources, evaluation rows) per evaluated unit, key
    (field, predictor, model_id, task); each row is (model_id, task, field, source, metric,
    value, n, details JSON). `removed`: (key, sources) of units whose inputs are gone."""

    def write(conn: duckdb.DuckDBPyConnection) -> int:
        inserted = 0
        for (field, predictor, model_id, task), sources in [
            *((key, sources) for key, _, _, sources, _ in written),
            *removed,
        ]:
            conn.execute(
                "DELETE FROM evaluations WHERE labelled_set = ? AND model_id = ? AND task = ?"
                " AND field = ? AND list_contains(?, source)",
                [labelled_set, model_id, task, field, list(sources)],
            )
            conn.execute(
                "DELETE FROM evaluation_inputs WHERE labelled_set = ? AND field = ?"
                " AND predictor = ? AND model_id = ? AND task = ?",
                [labelled_set, field, predictor, model_id, task],
            )
        for (field, predictor, model_id, task), fingerprint, images, _, rows in written:
            conn.execute(
                "INSERT INTO evaluation_inputs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [labelled_set, field, predictor, model_id, task, fingerprint, images, run_id, at],
            )
            if rows:
                conn.executemany(
                    "INSERT INTO evaluations (labelled_set, model_id, task, field, source,"
                    " metric, value, n, details, run_id, evaluated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(labelled_set, *row, run_id, at) for row in rows],
                )
                inserted += len(rows)
        return inserted

    return warehouse.write(write)


def current_results(warehouse: Warehouse, labelled_set: str | None = None) -> pl.DataFrame:
    """One row per labelled set, field, source and model, metrics as columns: what
    `evaluations` holds now (each result as of the run that last had new inputs for it)."""
    where, params = ("WHERE labelled_set = ?", [labelled_set]) if labelled_set else ("", [])
    return warehouse.query(
        f"""
        SELECT labelled_set, field, source, model_id AS model, max(n) AS n,
               round(max(value) FILTER (metric = 'coverage'), 3) AS coverage,
               round(max(value) FILTER (metric = 'accuracy'), 3) AS accuracy,
               round(max(value) FILTER (metric = 'macro_f1'), 3) AS macro_f1,
               round(max(value) FILTER (metric = 'adjacent_accuracy'), 3) AS adjacent_accuracy,
               round(max(value) FILTER (metric = 'f1'), 3) AS f1,
               round(max(value) FILTER (metric = 'micro_f1'), 3) AS micro_f1,
               round(max(value) FILTER (metric = 'subset_accuracy'), 3) AS subset_accuracy,
               round(max(value) FILTER (metric = 'jaccard'), 3) AS jaccard,
               round(max(value) FILTER (metric = 'mae'), 3) AS mae,
               round(max(value) FILTER (metric = 'expected_calibration_error'), 3)
                   AS expected_calibration_error,
               round(max(value) FILTER (metric = 'top1_accuracy'), 3) AS top1,
               round(max(value) FILTER (metric = 'top5_accuracy'), 3) AS top5,
               bool_or(starts_with(lower(model_id), 'standin')) AS standin,
               max(run_id) AS run_id
        FROM evaluations {where}
        GROUP BY labelled_set, field, source, model_id
        ORDER BY labelled_set, field,
                 CASE source WHEN 'clip_zero_shot' THEN 0 WHEN 'vlm' THEN 1 ELSE 2 END, model_id
        """,
        params,
    )


def evaluation_row_count(warehouse: Warehouse) -> int:
    if not table_exists(warehouse, "evaluations"):
        return 0
    return int(warehouse.rows("SELECT count(*) FROM evaluations")[0][0])


def current_confusions(
    warehouse: Warehouse, labelled_set: str
) -> list[tuple[str, str, str, int, dict]]:
    """(field, source, model_id, n, confusion) of each current result that has a matrix."""
    if not table_exists(warehouse, "evaluations"):
        return []
    rows = warehouse.rows(
        "SELECT field, source, model_id, n, json_extract_string(details, '$.confusion')"
        " FROM evaluations WHERE labelled_set = ? AND metric = 'accuracy'"
        " ORDER BY field, CASE source WHEN 'clip_zero_shot' THEN 0 ELSE 1 END, model_id",
        [labelled_set],
    )
    rows = [row for row in rows if row[4] and row[4] != "null"]
    return [(f, s, m, int(n), json.loads(c)) for f, s, m, n, c in rows]
