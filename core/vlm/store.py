"""Reading what is left to extract, and writing results: one transaction per batch.

Work is keyed by (image_id, task, task_fingerprint, model_id). An image is pending for a task
when it has no row for that key, or only an `error` row: errors are transient (server, network,
unreadable file) and are retried by the next run, while `invalid` and `truncated` are the model's
deterministic answer at temperature 0, and `rejected` the server's deterministic refusal of the
request (a 4xx: prompt over the context length, a schema it cannot compile): they stay until the
task (its instruction, schema or token budget) or the model changes. An `unavailable` or
`changed_since_ingest` row (no file held the image's bytes) is retried once an ingestion has
recorded a usable file of the image again, not on every run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from core.copies import UNREADABLE_STATUSES, USABLE_COPY
from core.tasks.base import Task
from core.vlm.types import ExtractionResult, ImageInput
from core.warehouse import Warehouse
from core.warehouse.queries import DROP_IMAGE_PATHS, table_exists

RETRYABLE_STATUSES = ("error",)
CONFIDENCE_COLUMNS = {
    "image_id": pa.string(),
    "task": pa.string(),
    "task_fingerprint": pa.string(),
    "model_id": pa.string(),
    "field": pa.string(),
    "confidence": pa.float64(),
    "created_at": pa.timestamp("us", tz="UTC"),
}


def pending_images(
    warehouse: Warehouse, drop_id: str, drop_root: Path, task: Task, model_id: str
) -> list[ImageInput]:
    """The drop's distinct images with no final result for this task version and model."""
    usable = USABLE_COPY.format(image_id="e.image_id")
    rows = warehouse.rows(
        f"""
        SELECT f.image_id, f.path
        FROM ({DROP_IMAGE_PATHS}) f
        WHERE NOT EXISTS (
            SELECT 1 FROM vlm_extractions e
            WHERE e.image_id = f.image_id AND e.task = $task
              AND e.task_fingerprint = $fp AND e.model_id = $model
              AND e.status NOT IN (SELECT unnest($retry))
              AND NOT (e.status IN (SELECT unnest($unreadable)) AND {usable})
          )
        ORDER BY f.path, f.image_id
        """,
        {
            "drop": drop_id,
            "task": task.name,
            "fp": task.fingerprint,
            "model": model_id,
            "retry": list(RETRYABLE_STATUSES),
            "unreadable": list(UNREADABLE_STATUSES),
        },
    )
    return [ImageInput(image_id=image_id, path=drop_root / path) for image_id, path in rows]


def ensure_task_tables(conn: duckdb.DuckDBPyConnection, task: Task) -> None:
    """Create the task's tables, and add columns a task gained since they were created."""
    for statement in task.tables.ddl():
        conn.execute(statement)
    wanted = {task.tables.table: task.tables.columns}
    wanted |= {child.table: child.columns for child in task.tables.children}
    for table, columns in wanted.items():
        present = {
            name
            for (name,) in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
            ).fetchall()
        }
        for name, kind in columns:
            if name not in present:
                conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {kind}')


def write_batch(
    warehouse: Warehouse,
    task: Task,
    model_id: str,
    drop_id: str,
    results: Sequence[ExtractionResult],
) -> None:
    """Upsert one batch of results and their typed rows, all in one transaction."""
    if not results:
        return
    now = datetime.now(UTC)
    image_ids = [r.image_id for r in results]
    key = {"ids": image_ids, "task": task.name, "fp": task.fingerprint, "model": model_id}
    extraction_rows = [
        (
            r.image_id,
            task.name,
            task.fingerprint,
            model_id,
            r.status,
            r.raw_text,
            json.dumps(r.parsed) if r.status == "ok" and r.parsed is not None else None,
            r.error,
            r.latency_ms,
            r.prompt_tokens,
            r.completion_tokens,
            r.cached_tokens,
            r.attempts,
            drop_id,
            now,
        )
        for r in results
    ]
    typed: dict[str, list[tuple]] = {name: [] for name in task.tables.names}
    confidence_rows: list[tuple] = []
    for r in results:
        if r.status == "ok" and r.parsed is not None:
            for table, rows in task.rows(r.image_id, model_id, r.parsed).items():
                typed[table] += rows
            confidence_rows += [
                (r.image_id, task.name, task.fingerprint, model_id, path, value, now)
                for path, value in (r.confidence or {}).items()
            ]
    keys = [name for name, _ in task.tables.KEY_COLUMNS]
    columns = {task.tables.table: keys + [c for c, _ in task.tables.columns]}
    for child in task.tables.children:
        columns[child.table] = [*keys, "idx", *(c for c, _ in child.columns)]

    def write(conn: duckdb.DuckDBPyConnection) -> None:
        ensure_task_tables(conn, task)
        conn.execute(
            "DELETE FROM vlm_extractions WHERE image_id IN (SELECT unnest($ids))"
            " AND task = $task AND task_fingerprint = $fp AND model_id = $model",
            key,
        )
        conn.executemany(
            "INSERT INTO vlm_extractions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            extraction_rows,
        )
        conn.execute(
            "DELETE FROM vlm_field_confidence WHERE image_id IN (SELECT unnest($ids))"
            " AND task = $task AND task_fingerprint = $fp AND model_id = $model",
            key,
        )
        if confidence_rows:  # through Arrow: a batch holds a row per answered field
            names = list(CONFIDENCE_COLUMNS)
            by_column = zip(names, zip(*confidence_rows, strict=True), strict=True)
            arrays = [pa.array(values, CONFIDENCE_COLUMNS[name]) for name, values in by_column]
            conn.register("confidence_rows", pa.table(arrays, names=names))
            try:
                conn.execute(
                    f"INSERT INTO vlm_field_confidence ({', '.join(names)})"
                    f" SELECT {', '.join(names)} FROM confidence_rows"
                )
            finally:
                conn.unregister("confidence_rows")
        for table, rows in typed.items():
            conn.execute(
                f'DELETE FROM "{table}" WHERE image_id IN (SELECT unnest($ids))'
                " AND task_fingerprint = $fp AND model_id = $model",
                {"ids": image_ids, "fp": task.fingerprint, "model": model_id},
            )
            if rows:
                names = ", ".join(f'"{c}"' for c in columns[table])
                marks = ", ".join("?" * len(columns[table]))
                conn.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', rows)

    warehouse.write(write)


def extraction_preview(
    warehouse: Warehouse, drop_id: str, model_id: str, tables: Sequence[str], *, rows: int = 20
) -> tuple[pl.DataFrame, int, dict[str, int]]:
    """The drop's first `rows` results of each task by path, the rows of `vlm_extractions`
    (all drops), and the rows of each typed task table in `tables`."""
    with warehouse.reader() as conn:
        preview = conn.sql(
            f"""
            SELECT e.task, left(e.image_id, 12) AS image_id, f.path, e.status,
                   CAST(e.parsed_json AS VARCHAR) AS parsed_json, e.error, e.latency_ms
            FROM vlm_extractions e JOIN ({DROP_IMAGE_PATHS}) f USING (image_id)
            WHERE e.model_id = $model
            QUALIFY row_number() OVER (PARTITION BY e.task ORDER BY f.path) <= $rows
            ORDER BY e.task, f.path
            """,
            params={"drop": drop_id, "model": model_id, "rows": rows},
        ).pl()
        total = conn.execute("SELECT count(*) FROM vlm_extractions").fetchone()
        per_table = {}
        for table in tables:
            if not table_exists(conn, table):  # created with a task's first result
                per_table[table] = 0
                continue
            found = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
            per_table[table] = int(found[0]) if found else 0
    return preview, int(total[0]) if total else 0, per_table


def confidence_summary(
    warehouse: Warehouse, drop_id: str, model_id: str, tasks: Sequence[Task], threshold: float
) -> list[dict[str, object]]:
    """Per task and field (list items pooled: `<list>[].<field>`), the drop's confidences of
    the current task versions: values, how many have one, mean, p10/p50/p90 and the share below
    `threshold`. Rows without logprobs count in `values` only."""
    if not tasks:
        return []
    rows = warehouse.rows(
        f"""
        SELECT c.task, regexp_replace(c.field, '\\[[0-9]+\\]', '[]', 'g') AS field,
               count(*), count(c.confidence), avg(c.confidence),
               quantile_cont(c.confidence, [0.1, 0.5, 0.9]),
               avg(CAST(c.confidence < $threshold AS DOUBLE))
        FROM vlm_field_confidence c JOIN ({DROP_IMAGE_PATHS}) f USING (image_id)
        WHERE c.model_id = $model
          AND list_contains($versions, c.task || '|' || c.task_fingerprint)
        GROUP BY ALL ORDER BY 1, 2
        """,
        {
            "drop": drop_id,
            "model": model_id,
            "threshold": threshold,
            "versions": [f"{t.name}|{t.fingerprint}" for t in tasks],
        },
    )
    out = []
    for task, field, values, n, mean, quantiles, below in rows:
        p10, p50, p90 = quantiles if quantiles else (None, None, None)
        out.append(
            {
                "task": task,
                "field": field,
                "values": int(values),
                "n": int(n),
                "mean": mean,
                "p10": p10,
                "p50": p50,
                "p90": p90,
                "below": below,
            }
        )
    return out
