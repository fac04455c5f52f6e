"""CLIP zero-shot vs VLM agreement per drop: the `label_agreement` table and its check outcomes.

Per field both labellers produce (`COMPARED_FIELDS`: single choice, and multi-label by mean
Jaccard), the CLIP model and the VLM model that labelled most of the drop's images (current task
version) are compared; the outcome is the `clip_vlm_agreement` check
(`core.quality.cross_stage.agreement`), and its counts and confusion matrix (single choice) or
per-value counts (multi-label) are one `label_agreement` row per (drop, field), rewritten whole
for the drop on every run.
"""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import polars as pl
from pydantic import BaseModel

from core.quality import cross_stage as checks
from core.quality.cross_stage import LabelSource
from core.quality.fields import COMPARED_FIELDS, FIELDS
from core.quality.metrics import ConfusionMatrix
from core.quality.outcome import CheckOutcome, drop_image_count, no_images
from core.tasks.registry import TASKS
from core.warehouse import Warehouse


class FieldAgreement(BaseModel):
    field: str
    clip_model_id: str | None
    vlm_model_id: str | None
    outcome: CheckOutcome

    @property
    def images_compared(self) -> int:
        return self.outcome.counts.get("images_compared", 0)

    @property
    def agreed(self) -> int:
        return self.outcome.counts.get("agreed", 0)

    @property
    def measure(self) -> str:
        """'exact' (same value) or 'jaccard' (multi-label: mean Jaccard of the two sets)."""
        return str(self.outcome.details.get("measure", "exact"))

    @property
    def per_value(self) -> dict | None:
        return self.outcome.details.get("per_value")

    @property
    def confusion(self) -> ConfusionMatrix | None:
        raw = self.outcome.details.get("confusion")
        return ConfusionMatrix.model_validate(raw) if raw else None


def field_agreement(
    warehouse: Warehouse, drop_id: str, field_name: str, min_rate: float
) -> FieldAgreement:
    """Agreement on one field; passes with a note when either side has no labels yet."""
    field = FIELDS[field_name]
    task = TASKS[field.task or ""]
    clip_source = (
        LabelSource.zero_shot_set if field.kind == "multi_choice" else LabelSource.zero_shot
    )
    clip_models = checks.models_of_drop(
        warehouse, drop_id, clip_source(field.zero_shot_label_set or "", "")
    )
    vlm_models = checks.models_of_drop(
        warehouse,
        drop_id,
        LabelSource.task_field(task.name, field.column or "", "", task.fingerprint),
    )
    if not clip_models or not vlm_models:
        with warehouse.reader() as conn:
            images = drop_image_count(conn, drop_id)
        outcome = (
            CheckOutcome(
                check_name=checks.AGREEMENT,
                passed=True,
                severity="WARN",
                summary=f"{field_name}: nothing to compare (CLIP models {clip_models}, "
                f"VLM models {vlm_models})",
            )
            if images
            else no_images(checks.AGREEMENT, "WARN", subject=field_name)
        )
        return FieldAgreement(
            field=field_name,
            clip_model_id=clip_models[0] if clip_models else None,
            vlm_model_id=vlm_models[0] if vlm_models else None,
            outcome=outcome,
        )
    outcome = checks.agreement(
        warehouse,
        drop_id,
        field,
        clip_model_id=clip_models[0],
        vlm_model_id=vlm_models[0],
        task_fingerprint=task.fingerprint,
        min_rate=min_rate,
    )
    return FieldAgreement(
        field=field_name, clip_model_id=clip_models[0], vlm_model_id=vlm_models[0], outcome=outcome
    )


def drop_agreement(warehouse: Warehouse, drop_id: str, min_rate: float) -> list[FieldAgreement]:
    return [field_agreement(warehouse, drop_id, name, min_rate) for name in COMPARED_FIELDS]


def write_agreement(
    warehouse: Warehouse,
    drop_id: str,
    agreements: list[FieldAgreement],
    *,
    run_id: str,
    at: dt.datetime | None = None,
) -> int:
    """Replace the drop's `label_agreement` rows (delete-then-insert, one transaction)."""
    warehouse.ensure_schema()
    at = at or dt.datetime.now(dt.UTC)
    rows = [
        (
            drop_id,
            a.field,
            a.clip_model_id,
            a.vlm_model_id,
            a.images_compared,
            a.agreed,
            a.outcome.value,
            json.dumps(a.confusion.model_dump()) if a.confusion else None,
            run_id,
            at,
            a.measure,
            json.dumps(a.per_value) if a.per_value is not None else None,
        )
        for a in agreements
    ]

    def write(conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute("DELETE FROM label_agreement WHERE drop_id = ?", [drop_id])
        if rows:
            conn.executemany(
                "INSERT INTO label_agreement (drop_id, field, clip_model_id, vlm_model_id,"
                " images_compared, agreed, agreement_rate, confusion, run_id, evaluated_at,"
                " measure, per_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    warehouse.write(write)
    return len(rows)


def agreement_table(warehouse: Warehouse, drop_id: str | None = None) -> pl.DataFrame:
    """The stored rows (without the confusion JSON), per drop and field."""
    where, params = ("WHERE drop_id = ?", [drop_id]) if drop_id else ("", [])
    return warehouse.query(
        "SELECT drop_id, field, clip_model_id, vlm_model_id, images_compared, agreed,"
        f" agreement_rate, measure, run_id FROM label_agreement {where}"
        " ORDER BY drop_id, field",
        params,
    )
