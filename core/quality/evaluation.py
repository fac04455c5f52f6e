"""Evaluation against a labelled set: CLIP zero-shot, the VLM and zero-shot kNN, side by side.

Predictions come from the warehouse by `image_id` (`clip_zero_shot`, `task_<task>` tables), for
every model that has them. Metrics are computed over the labelled images that have a prediction;
`coverage` says how many that is. Zero-shot kNN uses the label text embeddings as the neighbours
(as in the SigLIP validation); ranking labels by the stored zero-shot probabilities gives exactly
that ranking, since the softmax is monotonic in cosine similarity. Top-5 over a label set of five
or fewer labels is 1 by construction and is reported as such.

With stand-in models (model_id starting with "standin") the numbers are meaningless: random
weights. The report says so in its banner and in each row's details.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Literal

import polars as pl
import pyarrow as pa
from pydantic import BaseModel

from core.quality.fields import FIELDS, LabelField
from core.quality.labelled import LabelledSet
from core.quality.metrics import (
    ClassCounts,
    ConfusionMatrix,
    accuracy,
    adjacent_accuracy,
    confusion_matrix,
    macro_f1,
    per_class_counts,
    ranked,
    top_k_accuracy,
)
from core.warehouse import Warehouse
from core.warehouse.queries import table_exists

Source = Literal["clip_zero_shot", "vlm", "knn"]
STANDIN_PREFIX = "standin"
STANDIN_NOTE = (
    "stand-in models with random weights: these numbers are meaningless; they show the code path "
    "works, not how well anything labels images"
)


def is_standin(model_id: str) -> bool:
    return model_id.lower().startswith(STANDIN_PREFIX)


class SourceEvaluation(BaseModel):
    """One field, one source, one model: the metrics and the tables behind them."""

    field: str
    source: Source
    model_id: str
    task: str  # VLM task, or the zero-shot label set
    task_fingerprint: str | None = None
    n_labelled: int
    n: int  # labelled images with a prediction: what the metrics are over
    metrics: dict[str, float]
    per_class: list[ClassCounts] = []
    confusion: ConfusionMatrix | None = None

    @property
    def standin(self) -> bool:
        return is_standin(self.model_id)


class EvaluationReport(BaseModel):
    run_id: str
    labelled_source: str
    results: list[SourceEvaluation]

    @property
    def standin_models(self) -> list[str]:
        return sorted({r.model_id for r in self.results if r.standin})

    @property
    def banner(self) -> str | None:
        if not self.standin_models:
            return None
        return f"!!! {', '.join(self.standin_models)}: {STANDIN_NOTE} !!!"

    def side_by_side(self) -> pl.DataFrame:
        """One row per field, source and model; the metric columns line up for comparison."""
        order = {"clip_zero_shot": 0, "vlm": 1, "knn": 2}
        rows = [
            {
                "field": r.field,
                "source": r.source,
                "model_id": r.model_id,
                "n": r.n,
                "coverage": r.metrics.get("coverage"),
                "accuracy": r.metrics.get("accuracy"),
                "macro_f1": r.metrics.get("macro_f1"),
                "adjacent_accuracy": r.metrics.get("adjacent_accuracy"),
                "top1": r.metrics.get("top1_accuracy"),
                "top5": r.metrics.get("top5_accuracy"),
                "standin": r.standin,
            }
            for r in sorted(self.results, key=lambda r: (r.field, order[r.source], r.model_id))
        ]
        schema = {
            "field": pl.String,
            "source": pl.String,
            "model_id": pl.String,
            "n": pl.Int64,
            **dict.fromkeys(
                ("coverage", "accuracy", "macro_f1", "adjacent_accuracy", "top1", "top5"),
                pl.Float64,
            ),
            "standin": pl.Boolean,
        }
        return pl.DataFrame(rows, schema=schema)

    def markdown(self) -> str:
        frame = self.side_by_side()
        header = "| " + " | ".join(frame.columns) + " |"
        lines = [header, "|" + "---|" * len(frame.columns)]
        for row in frame.iter_rows():
            cells = [
                "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row
            ]
            lines.append("| " + " | ".join(cells) + " |")
        table = "\n".join(lines)
        return f"**{self.banner}**\n\n{table}" if self.banner else table


def _evaluate(
    field: LabelField,
    source: Source,
    model_id: str,
    task: str,
    truth: dict[str, str],
    predictions: dict[str, str],
    *,
    fingerprint: str | None = None,
) -> SourceEvaluation:
    ids = sorted(set(truth) & set(predictions))
    y_true = [truth[i] for i in ids]
    y_pred = [predictions[i] for i in ids]
    metrics = {
        "coverage": len(ids) / len(truth),
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
    }
    if field.ordinal:
        metrics["adjacent_accuracy"] = adjacent_accuracy(y_true, y_pred, field.values)
    return SourceEvaluation(
        field=field.name,
        source=source,
        model_id=model_id,
        task=task,
        task_fingerprint=fingerprint,
        n_labelled=len(truth),
        n=len(ids),
        metrics=metrics,
        per_class=per_class_counts(y_true, y_pred, field.values),
        confusion=confusion_matrix(y_true, y_pred, field.values),
    )


def _query_labelled(warehouse: Warehouse, sql: str, ids: list[str], params: list) -> list[tuple]:
    """Run `sql` with the labelled image ids registered as the table `labelled(image_id)`."""
    with warehouse.reader() as conn:
        conn.register("labelled", pa.table({"image_id": pa.array(ids, type=pa.string())}))
        return conn.execute(sql, params).fetchall()


def _zero_shot(
    warehouse: Warehouse, field: LabelField, truth: dict[str, str]
) -> list[SourceEvaluation]:
    if not field.zero_shot_label_set or not table_exists(warehouse, "clip_zero_shot"):
        return []
    rows = _query_labelled(
        warehouse,
        "SELECT z.model_id, z.image_id, z.top_label, map_entries(z.probabilities)"
        " FROM clip_zero_shot z JOIN labelled USING (image_id) WHERE z.label_set = ?"
        " ORDER BY z.model_id, z.image_id",
        sorted(truth),
        [field.zero_shot_label_set],
    )
    by_model: dict[str, dict[str, tuple[str, dict[str, float]]]] = {}
    for model_id, image_id, top, entries in rows:
        probabilities = {e["key"]: float(e["value"]) for e in entries or []}
        by_model.setdefault(model_id, {})[image_id] = (top, probabilities)
    results = []
    for model_id, predictions in sorted(by_model.items()):
        task = field.zero_shot_label_set
        clip = _evaluate(
            field,
            "clip_zero_shot",
            model_id,
            task,
            truth,
            {i: top for i, (top, _) in predictions.items()},
        )
        ids = sorted(set(truth) & set(predictions))
        rankings = [ranked(predictions[i][1]) for i in ids]
        y_true = [truth[i] for i in ids]
        knn = SourceEvaluation(
            field=field.name,
            source="knn",
            model_id=model_id,
            task=task,
            n_labelled=len(truth),
            n=len(ids),
            metrics={
                "coverage": len(ids) / len(truth),
                "top1_accuracy": top_k_accuracy(y_true, rankings, 1),
                "top5_accuracy": top_k_accuracy(y_true, rankings, 5),
            },
        )
        results += [clip, knn]
    return results


def _vlm(warehouse: Warehouse, field: LabelField, truth: dict[str, str]) -> list[SourceEvaluation]:
    table = field.task_table
    if not table or not field.column or not table_exists(warehouse, table):
        return []
    rows = _query_labelled(
        warehouse,
        f'SELECT t.model_id, t.task_fingerprint, t.image_id, CAST(t."{field.column}" AS VARCHAR)'
        f' FROM "{table}" t JOIN labelled USING (image_id) ORDER BY 1, 2, 3',
        sorted(truth),
        [],
    )
    versions: dict[str, dict[str, dict[str, str]]] = {}
    for model_id, fingerprint, image_id, value in rows:
        versions.setdefault(model_id, {}).setdefault(fingerprint, {})[image_id] = value
    results = []
    for model_id, by_fingerprint in sorted(versions.items()):
        # One task version per model: the one covering most labelled images (then by name).
        fingerprint, predictions = min(by_fingerprint.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        results.append(
            _evaluate(
                field,
                "vlm",
                model_id,
                field.task or "",
                truth,
                predictions,
                fingerprint=fingerprint,
            )
        )
    return results


def evaluate(warehouse: Warehouse, labelled: LabelledSet, *, run_id: str) -> EvaluationReport:
    """Every labelled field against every model that predicted it."""
    results: list[SourceEvaluation] = []
    for name in labelled.fields():
        field = FIELDS[name]
        truth = labelled.labels(name)
        results += _zero_shot(warehouse, field, truth)
        results += _vlm(warehouse, field, truth)
    return EvaluationReport(run_id=run_id, labelled_source=labelled.source, results=results)


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def write_evaluations(
    warehouse: Warehouse, report: EvaluationReport, *, evaluated_at: dt.datetime | None = None
) -> int:
    """Upsert one `evaluations` row per metric (key: run, labelled set, model, task, field,
    source, metric)."""
    at = evaluated_at or dt.datetime.now(dt.UTC)
    rows = []
    for result in report.results:
        details = {
            "labelled_source": report.labelled_source,
            "n_labelled": result.n_labelled,
            "task_fingerprint": result.task_fingerprint,
            "per_class": [c.model_dump() for c in result.per_class],
            "confusion": result.confusion.model_dump() if result.confusion else None,
        }
        if result.standin:
            details["note"] = STANDIN_NOTE
        for metric, value in result.metrics.items():
            rows.append(
                (
                    report.run_id,
                    result.model_id,
                    result.task,
                    result.field,
                    result.source,
                    metric,
                    _finite(value),
                    result.n,
                    json.dumps(details),
                    at,
                    report.labelled_source,
                )
            )
    if rows:
        with warehouse.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO evaluations (run_id, model_id, task, field, source,"
                " metric, value, n, details, evaluated_at, labelled_set)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
    return len(rows)
