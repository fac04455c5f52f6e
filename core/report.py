"""The plain-text summary the demo prints: what is in the warehouse, straight from SQL."""

from __future__ import annotations

import polars as pl

from core.labels.derive import build_tasks
from core.labels.loader import current_spec
from core.labels.spec import LabelsSpec
from core.quality.evaluation import STANDIN_NOTE
from core.quality.summary import latest_check_outcomes, latest_evaluation
from core.tasks.base import Task
from core.warehouse import Warehouse

BEFORE_TASKS = (
    "drops",
    "images",
    "image_files",
    "rejected_files",
    "clip_embeddings",
    "clip_zero_shot",
    "vlm_extractions",
)
AFTER_TASKS = ("quality_results", "evaluations")


def tables_of(tasks: dict[str, Task]) -> tuple[str, ...]:
    """The tables the summary counts: the pipeline's, with each task's table and child tables
    (from the labeling spec) in between."""
    task_tables = [
        table
        for task in tasks.values()
        for table in (task.tables.table, *(child.table for child in task.tables.children))
    ]
    return (*BEFORE_TASKS, *task_tables, *AFTER_TASKS)


def task_section(warehouse: Warehouse, task: Task) -> pl.DataFrame:
    """The first 10 rows of a task's table (current version): its fields, and the number of
    entities in each of its lists."""
    tables = task.tables
    counts = [
        f'(SELECT count(*) FROM "{child.table}" c WHERE c.image_id = t.image_id'
        " AND c.model_id = t.model_id AND c.task_fingerprint = t.task_fingerprint)"
        f' AS "{child.field}"'
        for child in tables.children
    ]
    columns = [f't."{name}"' for name, _ in tables.columns] + counts
    return warehouse.query(
        f"SELECT i.first_path, {', '.join(columns)}, t.model_id"
        f' FROM "{tables.table}" t JOIN images i USING (image_id)'
        " WHERE t.task_fingerprint = ? ORDER BY i.first_path, t.model_id LIMIT 10",
        [task.fingerprint],
    )


def _section(title: str, frame: pl.DataFrame) -> str:
    with pl.Config(
        tbl_rows=40,
        tbl_cols=12,
        tbl_width_chars=180,
        fmt_str_lengths=64,
        tbl_hide_dataframe_shape=True,
    ):
        return f"\n{title}\n{frame}"


def summary(
    warehouse: Warehouse,
    tables: tuple[str, ...] | None = None,
    spec: LabelsSpec | None = None,
) -> str:
    """The demo's summary under the labeling spec (default: the current one)."""
    tasks = build_tasks(current_spec() if spec is None else spec)
    tables = tables_of(tasks) if tables is None else tables
    present = {
        name for (name,) in warehouse.rows("SELECT table_name FROM information_schema.tables")
    }
    counts = pl.DataFrame(
        {
            "table": [t for t in tables if t in present],
            "rows": [
                warehouse.rows(f'SELECT count(*) FROM "{t}"')[0][0] for t in tables if t in present
            ],
        }
    )
    parts = [
        _section("Rows per table", counts),
        _section(
            "Drops",
            warehouse.query(
                "SELECT drop_id, kind, files_seen, files_ingested, files_rejected, images_new"
                " FROM drops ORDER BY first_ingested_at"
            ),
        ),
        _section(
            "Images (first 10)",
            warehouse.query(
                "SELECT left(image_id, 12) AS image_id, first_path, format, width, height, mode,"
                " frame_count, notes FROM images ORDER BY first_path LIMIT 10"
            ),
        ),
        _section(
            "Rejected files by reason",
            warehouse.query(
                "SELECT reason, count(*) AS files FROM rejected_files GROUP BY 1 ORDER BY 2 DESC"
            ),
        ),
    ]
    if {"clip_embeddings", "clip_zero_shot"} <= present:
        parts += [
            _section(
                "CLIP embeddings by model and kind",
                warehouse.query(
                    "SELECT model_id, kind, dim, count(*) AS images FROM clip_embeddings"
                    " GROUP BY ALL ORDER BY ALL"
                ),
            ),
            _section(
                "CLIP zero-shot top labels (first 12 images)",
                warehouse.query(
                    "SELECT i.first_path, z.model_id,"
                    " map_from_entries(list((z.label_set, z.top_label || ' ' || round(z.top_probability, 2))"
                    " ORDER BY z.label_set))::VARCHAR AS top_labels"
                    " FROM clip_zero_shot z JOIN images i USING (image_id)"
                    " GROUP BY ALL ORDER BY ALL LIMIT 12"
                ),
            ),
        ]
    if "vlm_extractions" in present:
        parts.append(
            _section(
                "VLM extractions by task, model and status",
                warehouse.query(
                    "SELECT task, model_id, status, count(*) AS images,"
                    " round(median(latency_ms), 1) AS p50_ms FROM vlm_extractions"
                    " GROUP BY ALL ORDER BY task, model_id, status"
                ),
            )
        )
    for task in tasks.values():
        if task.tables.table in present:
            parts.append(_section(f"{task.name} (first 10)", task_section(warehouse, task)))
    if "quality_results" in present:
        outcomes = latest_check_outcomes(warehouse)
        failed = outcomes.filter(~outcomes["passed"])
        parts.append(
            _section(
                f"Quality checks, latest outcome per check ({outcomes.height} checks,"
                f" {failed.filter(failed['severity'] == 'ERROR').height} errors,"
                f" {failed.filter(failed['severity'] == 'WARN').height} warnings)",
                outcomes.select(
                    "asset",
                    "check_name",
                    "partition",
                    "passed",
                    "severity",
                    "value",
                    pl.col("summary").str.slice(0, 90),
                ),
            )
        )
    if "evaluations" in present:
        evaluation = latest_evaluation(warehouse)
        title = "Evaluation against the labelled sets (current results)"
        if evaluation.height and evaluation["standin"].any():
            title += f"\n!!! {STANDIN_NOTE} !!!"
        parts.append(
            _section(title, evaluation if evaluation.height else pl.DataFrame({"note": ["none"]}))
        )
    return "\n".join(parts)
