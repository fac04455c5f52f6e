"""The plain-text summary the demo prints: what is in the warehouse, straight from SQL."""

from __future__ import annotations

import polars as pl

from core.quality.evaluation import STANDIN_NOTE
from core.quality.summary import latest_check_outcomes, latest_evaluation
from core.warehouse import Warehouse

TABLES = (
    "drops",
    "images",
    "image_files",
    "rejected_files",
    "clip_embeddings",
    "clip_zero_shot",
    "vlm_extractions",
    "task_scenery_people",
    "task_scenery_people__people",
    "task_age_gender",
    "task_basketball_action",
    "quality_results",
    "evaluations",
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


def summary(warehouse: Warehouse, tables: tuple[str, ...] = TABLES) -> str:
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
    if "task_scenery_people" in present:
        parts.append(
            _section(
                "scenery_people (first 10)",
                warehouse.query(
                    "SELECT i.first_path, s.scenery, count(p.idx) AS people, s.model_id"
                    " FROM task_scenery_people s JOIN images i USING (image_id)"
                    " LEFT JOIN task_scenery_people__people p ON p.image_id = s.image_id"
                    " AND p.model_id = s.model_id AND p.task_fingerprint = s.task_fingerprint"
                    " GROUP BY ALL ORDER BY i.first_path LIMIT 10"
                ),
            )
        )
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
