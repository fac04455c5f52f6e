"""The `vlm_extractions` asset: structured labels from a vision-language model, per drop.

One asset runs every configured task, so a launched SGLang server starts once per run, inside this
step, and serves all tasks; results land in `vlm_extractions` and the typed `task_<name>` tables.
It declares the `gpu` pool, which the instance limits to one step at a time, and holds its model
or server only while the step runs (`VLM.session`).
"""

import json

import dagster as dg
import polars as pl
from pydantic import Field

from assets.ingestion import images
from assets.metadata import (
    GROUP,
    column_schema,
    counts_markdown,
    definition_schema,
    records_table,
)
from assets.quality import record_and_report
from core.labels.describe import spec_markdown
from core.labels.loader import current_spec, spec_path
from core.quality import cross_stage
from core.quality.cross_stage import LabelSource
from core.quality.fields import FIELDS
from core.quality.outcome import CheckOutcome, merge_outcomes, subject_counts
from core.tasks.base import Task
from core.tasks.registry import TASKS, get_tasks
from core.vlm import checks, guards
from core.vlm.checks import ExtractionScope
from core.vlm.run import TaskReport, extract_drop
from core.vlm.store import confidence_summary, extraction_preview
from core.warehouse import Warehouse
from orchestration.partitions import image_drops
from resources.drop_folder import DropFolderResource
from resources.vlm import VLM
from resources.warehouse import WarehouseResource

ALL_ANSWERED_CHECK = checks.EXTRACTION_COVERAGE
VALIDITY_CHECK = checks.EXTRACTION_VALIDITY
TRUNCATION_CHECK = checks.EXTRACTION_TRUNCATION
ENUM_CHECK = checks.EXTRACTION_ENUMS
ENTITY_COUNT_CHECK = checks.EXTRACTION_ENTITY_COUNTS
LABEL_DRIFT_CHECK = cross_stage.LABEL_DRIFT
CONSTANT_ANSWERS_CHECK = guards.EXTRACTION_CONSTANT_ANSWERS
REFUSALS_CHECK = guards.EXTRACTION_REFUSALS
PREVIEW_ROWS = 20


class ExtractionConfig(dg.Config):
    tasks: list[str] = Field(
        default=list(TASKS), min_length=1, description="Task names of the labeling spec."
    )
    batch_size: int = Field(default=64, ge=1, description="Images per write transaction.")
    validity_error_below: float = Field(
        default=0.5, ge=0, le=1, description="Validity check fails with ERROR below this rate."
    )
    validity_warn_below: float = Field(
        default=0.9, ge=0, le=1, description="Validity check warns below this rate."
    )
    max_truncation_rate: float = Field(
        default=0.05, ge=0, le=1, description="Truncation check warns above this rate."
    )
    drift_threshold: float = Field(
        default=0.25, gt=0, description="Label drift check warns when PSI is above."
    )
    drift_min_images: int = Field(
        default=cross_stage.DRIFT_MIN_IMAGES,
        ge=1,
        description="Label drift check: judge only with this many answers in the drop and in "
        "earlier drops.",
    )
    guard_min_images: int = Field(
        default=guards.DEFAULT_MIN_IMAGES,
        ge=2,
        description="Constant-answers check: judge a field only with this many answers.",
    )


def quality_outcomes(
    store: Warehouse, drop_id: str, model_id: str, tasks: list[Task], config: ExtractionConfig
) -> list[CheckOutcome]:
    """The extraction checks of every task (current version, this model), folded per check,
    and label drift of every field the tasks extract."""
    per_task = {}
    for task in tasks:
        scope = ExtractionScope(
            task=task.name, model_id=model_id, task_fingerprint=task.fingerprint
        )
        per_task[task.name] = checks.extraction_checks(
            store,
            drop_id,
            scope,
            task.model,
            error_below=config.validity_error_below,
            warn_below=config.validity_warn_below,
            max_truncation=config.max_truncation_rate,
        )
    names = {task.name: task for task in tasks}
    drift = {
        field.name: [
            cross_stage.label_drift(
                store,
                drop_id,
                LabelSource.task_field(
                    field.task, field.column, model_id, names[field.task].fingerprint
                ),
                categories=field.values,
                threshold=config.drift_threshold,
                min_images=config.drift_min_images,
            )
        ]
        for field in FIELDS.values()
        if field.task in names and field.column
    }
    guarded = guards.guard_checks(
        store,
        drop_id,
        model_id,
        tasks,
        min_images=config.guard_min_images,
    )
    outcomes = merge_outcomes(
        {name: [*per_task[name], *guarded.get(name, [])] for name in per_task}, key="task"
    )
    outcomes += merge_outcomes(drift, key="field")
    if not drift:  # no configured task extracts a labelled field: nothing to drift
        outcomes.append(
            CheckOutcome(
                check_name=LABEL_DRIFT_CHECK,
                passed=True,
                severity="WARN",
                summary="no configured task extracts a label field",
            )
        )
    return outcomes


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# The per-task tables on the Events page: one row per task, not one key per number; split in
# two (what the task is, what this run did) so each fits the metadata panel.
TASK_COLUMNS = {
    "task": "the extraction task (core/tasks/registry.py)",
    "table": "the typed table its `ok` results are flattened into",
    "rows": "rows of that table (all drops)",
    "fingerprint": "the task's version: hash of instruction + schema + token budget",
}
RUN_COLUMNS = {
    "task": "the extraction task",
    "images": "images this run sent to the model for the task",
    "images/s": "this run's throughput for the task",
    "p50 ms": "median latency per image, this run",
    "p95 ms": "95th percentile latency per image, this run",
    "valid": "share of this run's results that are `ok`",
    "cached": "share of prompt tokens served from the prefix cache",
    "statuses": "this run's results by status",
}
CONFIDENCE_COLUMNS = {
    "task": "the extraction task",
    "field": "the value's path in the answer; list items pooled as `[]`",
    "values": "ok answers in this drop with this field (current task version, this model)",
    "n": "of those, with a confidence (NULL where the backend returned no logprobs)",
    "mean": "mean confidence: exp(sum of the value's token logprobs)",
    "p10": "10th percentile",
    "p50": "median",
    "p90": "90th percentile",
    "below": "share below the spec's review threshold (`review.low_confidence_below`); the "
    "review queue uses the labelled fields",
}
# A preview cell of a task's answer is cut to this many characters (the full one is in SQL).
ANSWER_CHARS = 40


def _task_row(task: Task, rows: int) -> dict[str, object]:
    return {
        "task": task.name,
        "table": task.tables.table,
        "rows": rows,
        "fingerprint": task.fingerprint,
    }


def _run_row(report: TaskReport) -> dict[str, object]:
    return {
        "task": report.task,
        "images": report.done,
        "images/s": _round(report.images_per_s, 2),
        "p50 ms": _round(report.latency_percentile(50), 1),
        "p95 ms": _round(report.latency_percentile(95), 1),
        "valid": _round(report.validity_rate),
        "cached": _round(report.cached_token_ratio),
        "statuses": ", ".join(f"{k}: {v}" for k, v in sorted(report.statuses.items())),
    }


def _answer_text(value: object) -> object:
    """One answer field as a cell: scalars as they are, a list of items (the people) as
    `n: a, b; c, d`, cut to ANSWER_CHARS."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list):
        items = [
            ", ".join(str(v) for v in item.values()) if isinstance(item, dict) else str(item)
            for item in value
        ]
        text = f"{len(items)}" + (f": {'; '.join(items)}" if items else "")
    else:
        text = json.dumps(value)
    return text if len(text) <= ANSWER_CHARS else text[: ANSWER_CHARS - 1] + "…"


def task_previews(preview: pl.DataFrame) -> dict[str, dg.MetadataValue]:
    """One table per task, its answer's fields as columns (not one JSON column the panel cuts
    off): path, status, each field, and the error where a result has one."""
    tables: dict[str, dg.MetadataValue] = {}
    for (task,), rows in preview.group_by("task", maintain_order=True):
        records = []
        for row in rows.iter_rows(named=True):
            answer = json.loads(row["parsed_json"]) if row["parsed_json"] else {}
            record = {"path": row["path"], "status": row["status"]}
            record |= {key: _answer_text(value) for key, value in answer.items()}
            if row["error"]:
                record["error"] = _answer_text(row["error"])
            records.append(record)
        columns = dict.fromkeys(key for record in records for key in record)
        tables[f"preview · {task}"] = records_table(
            records, {name: PREVIEW_COLUMNS.get(name, "the model's answer") for name in columns}
        )
    return tables


PREVIEW_COLUMNS = {
    "path": "the image's file in this drop",
    "status": "ok, invalid, truncated, rejected, error or unavailable",
    "error": "why the result is not ok (cut; the full text is in vlm_extractions.error)",
}


@dg.asset(
    partitions_def=image_drops,
    deps=[images],
    group_name=GROUP,
    kinds={"duckdb", "python"},
    pool="gpu",
    metadata={
        **definition_schema("vlm_extractions"),
        "labeling spec": dg.MetadataValue.md(spec_markdown(current_spec(), str(spec_path()))),
    },
    check_specs=[
        dg.AssetCheckSpec(
            ALL_ANSWERED_CHECK,
            asset="vlm_extractions",
            blocking=True,
            description="Every image of the drop has a result or failure row for every task "
            "(current task version, this model).",
        ),
        dg.AssetCheckSpec(
            VALIDITY_CHECK,
            asset="vlm_extractions",
            blocking=True,  # only its ERROR level blocks: agreement/evaluation on a few survivors
            description="Share of images whose result is `ok`: ERROR below "
            "`validity_error_below` (blocks downstream), WARN below `validity_warn_below`.",
        ),
        dg.AssetCheckSpec(
            TRUNCATION_CHECK,
            asset="vlm_extractions",
            description="Warns when more than `max_truncation_rate` of results hit the token limit.",
        ),
        dg.AssetCheckSpec(
            ENUM_CHECK,
            asset="vlm_extractions",
            blocking=True,
            description="Typed task tables hold only values the task schema's Literals allow.",
        ),
        dg.AssetCheckSpec(
            ENTITY_COUNT_CHECK,
            asset="vlm_extractions",
            blocking=True,
            description="Child rows per image (entities per photo) within the list's bounds.",
        ),
        dg.AssetCheckSpec(
            LABEL_DRIFT_CHECK,
            asset="vlm_extractions",
            description="Warns when an extracted field's distribution in this drop departs from "
            "earlier drops (PSI above `drift_threshold`).",
        ),
        dg.AssetCheckSpec(
            CONSTANT_ANSWERS_CHECK,
            asset="vlm_extractions",
            description="Model guard: warns when a field has the same answer on every image of "
            "a drop with at least `guard_min_images` answers (a stuck model or ignored prompt).",
        ),
        dg.AssetCheckSpec(
            REFUSALS_CHECK,
            asset="vlm_extractions",
            description="Model guard: warns on free-text answers that are refusals or "
            "non-answers ('unknown', 'none', empty) and on failed results whose raw JSON holds "
            "one as a string value.",
        ),
        *(
            dg.AssetCheckSpec(
                guards.consistency_check_name(rule),
                asset="vlm_extractions",
                description=f"Model guard (labeling spec rule `{rule.name}`): warns when more "
                f"than {rule.max_share:.0%} of the images have `{rule.when_answered}` answered "
                f"but an empty `{rule.expect_entities}` list.",
            )
            for rule in current_spec().consistency
        ),
    ],
)
def vlm_extractions(
    context: dg.AssetExecutionContext,
    config: ExtractionConfig,
    warehouse: WarehouseResource,
    drop_folder: DropFolderResource,
    vlm: VLM,
) -> dg.MaterializeResult:
    """Structured labels per image and task (`vlm_extractions`, `task_<name>` tables)."""
    store = warehouse.get()
    drop_id = context.partition_key
    tasks = get_tasks(config.tasks)
    # The model (or launched server) lives inside this block: this step holds the `gpu` pool,
    # and the model is released (server stopped) before the step ends.
    with vlm.session(context.log) as backend:
        model_id = backend.model_id
        reports = extract_drop(
            store,
            backend,
            drop_id,
            drop_folder.path,
            tasks,
            batch_size=config.batch_size,
            log=context.log.info,
        )
        server = backend.server_metrics()
    outcomes = quality_outcomes(store, drop_id, model_id, tasks, config)
    validity_outcome = next(o for o in outcomes if o.check_name == VALIDITY_CHECK)
    statuses: dict[str, int] = {}  # latest result per image and task, summed over tasks
    for counts in subject_counts(validity_outcome).values():
        for status, n in counts.items():
            if status != "images":
                statuses[status] = statuses.get(status, 0) + n
    total = sum(statuses.values())
    # The check's rate: images no file still held (unavailable) are not judged.
    validity = validity_outcome.value if validity_outcome.value is not None else 1.0
    preview, extraction_rows, task_rows = extraction_preview(
        store, drop_id, model_id, [task.tables.table for task in tasks], rows=PREVIEW_ROWS
    )
    metadata: dict[str, object] = {
        "dagster/row_count": extraction_rows,
        "dagster/partition_row_count": total,
        "dagster/column_schema": column_schema(store, "vlm_extractions"),
        "dagster/table_name": "vlm_extractions",
        "model_id": model_id,
        "statuses": counts_markdown(statuses, key="status", value="rows"),
        "validity_rate": dg.MetadataValue.float(round(validity, 4)),
        **task_previews(preview),
    }
    this_run = [r for r in reports if r.done]
    if this_run:
        merged = TaskReport.combined(this_run)
        metadata |= {
            "images_per_s": dg.MetadataValue.float(round(merged.images_per_s, 3)),
            "p50_latency_ms": dg.MetadataValue.float(
                round(merged.latency_percentile(50) or 0.0, 1)
            ),
            "p95_latency_ms": dg.MetadataValue.float(
                round(merged.latency_percentile(95) or 0.0, 1)
            ),
            "cached_token_ratio": dg.MetadataValue.float(
                round(merged.cached_token_ratio or 0.0, 4)
            ),
        }
    metadata["tasks"] = records_table(
        [_task_row(task, task_rows.get(task.tables.table, 0)) for task in tasks], TASK_COLUMNS
    )
    if this_run:
        metadata["this run"] = records_table([_run_row(r) for r in this_run], RUN_COLUMNS)
    threshold = current_spec().review.low_confidence_below
    confidence = confidence_summary(store, drop_id, model_id, tasks, threshold)
    if confidence:
        metadata["confidence"] = records_table(
            [
                {k: _round(v) if isinstance(v, float) else v for k, v in row.items()}
                for row in confidence
            ],
            CONFIDENCE_COLUMNS | {"below": f"{CONFIDENCE_COLUMNS['below']} ({threshold:g})"},
        )
    if server:
        metadata["server_metrics"] = records_table(
            [{"metric": name, "value": value} for name, value in sorted(server.items())],
            {"metric": "SGLang /metrics summary", "value": "its value"},
        )
    results = record_and_report(context, store, outcomes, asset="vlm_extractions")
    return dg.MaterializeResult(metadata=metadata, check_results=results)
