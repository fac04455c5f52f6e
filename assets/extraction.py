"""The `vlm_extractions` asset: structured labels from a vision-language model, per drop.

One asset runs every configured task, so a launched SGLang server starts once per run and serves
all tasks; results land in `vlm_extractions` and the typed `task_<name>` tables. It declares the
`gpu` pool, which the instance limits to one step at a time.
"""

import dagster as dg
from pydantic import Field

from assets.ingestion import images
from assets.metadata import column_schema, counts_markdown, preview_table
from core.tasks.registry import TASKS, get_tasks
from core.vlm.run import TaskReport, extract_drop
from core.warehouse import Warehouse
from orchestration.partitions import image_drops
from resources.drop_folder import DropFolderResource
from resources.sglang_server import SGLangServer
from resources.vlm import VLMResource
from resources.warehouse import WarehouseResource

ALL_ANSWERED_CHECK = "every_image_answered"
VALIDITY_CHECK = "validity_rate"
MIN_VALIDITY = 0.9
PREVIEW_ROWS = 20


class ExtractionConfig(dg.Config):
    tasks: list[str] = Field(default=list(TASKS), description="Task names (core/tasks).")
    batch_size: int = Field(default=64, ge=1, description="Images per write transaction.")


def _coverage(store: Warehouse, drop_id: str, model_id: str, tasks: list) -> dict[str, int]:
    """Per task: the drop's images with no row at all for this task version and model."""
    missing = {}
    for task in tasks:
        missing[task.name] = int(
            store.rows(
                """
                SELECT count(DISTINCT f.image_id) FROM image_files f
                LEFT JOIN vlm_extractions e ON e.image_id = f.image_id AND e.task = $t
                  AND e.task_fingerprint = $fp AND e.model_id = $m
                WHERE f.drop_id = $d AND e.image_id IS NULL
                """,
                {"t": task.name, "fp": task.fingerprint, "m": model_id, "d": drop_id},
            )[0][0]
        )
    return missing


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _task_metadata(report: TaskReport) -> dict[str, object]:
    return {
        "images": report.done,
        "images_per_s": _round(report.images_per_s, 2),
        "p50_latency_ms": _round(report.latency_percentile(50), 1),
        "p95_latency_ms": _round(report.latency_percentile(95), 1),
        "validity_rate": _round(report.validity_rate),
        "cached_token_ratio": _round(report.cached_token_ratio),
        "statuses": dict(report.statuses),
    }


@dg.asset(
    partitions_def=image_drops,
    deps=[images],
    group_name="extraction",
    kinds={"duckdb", "python"},
    pool="gpu",
    check_specs=[
        dg.AssetCheckSpec(
            ALL_ANSWERED_CHECK,
            asset="vlm_extractions",
            blocking=True,
            description="Every image of the drop has a result or failure row for every task.",
        ),
        dg.AssetCheckSpec(
            VALIDITY_CHECK,
            asset="vlm_extractions",
            description=f"At least {MIN_VALIDITY:.0%} of this drop's results are `ok`.",
        ),
    ],
)
def vlm_extractions(
    context: dg.AssetExecutionContext,
    config: ExtractionConfig,
    warehouse: WarehouseResource,
    drop_folder: DropFolderResource,
    vlm: VLMResource,
    sglang: SGLangServer,
) -> dg.MaterializeResult:
    """Structured labels per image and task (`vlm_extractions`, `task_<name>` tables)."""
    store = warehouse.get()
    drop_id = context.partition_key
    tasks = get_tasks(config.tasks)
    backend = vlm.get_backend(sglang, context.log)
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
    missing = _coverage(store, drop_id, model_id, tasks)
    statuses = _drop_statuses(store, drop_id, model_id, tasks)
    total = sum(statuses.values())
    validity = statuses.get("ok", 0) / total if total else 1.0
    preview = store.query(
        """
        SELECT e.task, left(e.image_id, 12) AS image_id, f.path, e.status,
               CAST(e.parsed_json AS VARCHAR) AS parsed_json, e.error, e.latency_ms
        FROM vlm_extractions e
        JOIN (SELECT image_id, min(path) AS path FROM image_files WHERE drop_id = ? GROUP BY 1) f
          USING (image_id)
        WHERE e.model_id = ?
        ORDER BY e.task, f.path LIMIT ?
        """,
        [drop_id, model_id, PREVIEW_ROWS],
    )
    metadata: dict[str, object] = {
        "dagster/row_count": int(store.rows("SELECT count(*) FROM vlm_extractions")[0][0]),
        "dagster/partition_row_count": total,
        "dagster/column_schema": column_schema(store, "vlm_extractions"),
        "dagster/table_name": "vlm_extractions",
        "model_id": model_id,
        "tasks": dg.MetadataValue.json({t.name: t.fingerprint for t in tasks}),
        "statuses": counts_markdown(statuses, key="status", value="rows"),
        "validity_rate": dg.MetadataValue.float(round(validity, 4)),
        "preview": preview_table(preview),
    }
    this_run = [r for r in reports if r.done]
    if this_run:
        done = sum(r.done for r in this_run)
        seconds = sum(r.seconds for r in this_run)
        latencies = sorted(x for r in this_run for x in r.latencies_ms)
        merged = TaskReport("all", "")
        merged.latencies_ms = latencies
        prompt = sum(r.prompt_tokens for r in this_run)
        metadata |= {
            "images_per_s": dg.MetadataValue.float(round(done / seconds, 3) if seconds else 0.0),
            "p50_latency_ms": dg.MetadataValue.float(round(merged.latency_percentile(50) or 0, 1)),
            "p95_latency_ms": dg.MetadataValue.float(round(merged.latency_percentile(95) or 0, 1)),
            "cached_token_ratio": dg.MetadataValue.float(
                round(sum(r.cached_tokens for r in this_run) / prompt, 4) if prompt else 0.0
            ),
            "per_task": dg.MetadataValue.json({r.task: _task_metadata(r) for r in this_run}),
        }
    server = backend.server_metrics()
    if server:
        metadata["server_metrics"] = dg.MetadataValue.json(server)
    for task in tasks:
        metadata[f"rows/{task.tables.table}"] = int(
            store.rows(f'SELECT count(*) FROM "{task.tables.table}"')[0][0]
        )
    checks = [
        dg.AssetCheckResult(
            check_name=ALL_ANSWERED_CHECK,
            passed=not any(missing.values()),
            metadata={"images_without_row": dg.MetadataValue.json(missing)},
        ),
        dg.AssetCheckResult(
            check_name=VALIDITY_CHECK,
            passed=validity >= MIN_VALIDITY,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"validity_rate": round(validity, 4), "rows": total},
        ),
    ]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


def _drop_statuses(store: Warehouse, drop_id: str, model_id: str, tasks: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in tasks:
        for status, n in store.rows(
            """
            SELECT status, count(*) FROM vlm_extractions
            WHERE model_id = $m AND task = $t AND task_fingerprint = $fp
              AND image_id IN (SELECT image_id FROM image_files WHERE drop_id = $d)
            GROUP BY 1
            """,
            {"m": model_id, "t": task.name, "fp": task.fingerprint, "d": drop_id},
        ):
            counts[status] = counts.get(status, 0) + int(n)
    return counts
