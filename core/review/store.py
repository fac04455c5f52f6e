"""Review data in the warehouse: exporting the queue, importing reviews, and `final_labels`.

`human_labels` holds one row per (image, task, field, reviewer): a re-import of the same file
rewrites the same rows, and a later export of the same reviewer's work replaces older values
(by `reviewed_at`). The view `final_labels` is the human value where there is one (the latest
over reviewers), else the model's value from its latest `ok` extraction, with `provenance`
'human' or 'model'. A human `<list>.count` also hides the model's items at or past that count.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import pyarrow as pa

from core.labels.derive import build_tasks
from core.labels.loader import current_spec
from core.labels.spec import LabelsSpec
from core.quality.fields import spec_fields
from core.quality.labelled import LabelledImage, LabelledSet
from core.review.labelstudio import (
    HumanLabel,
    ReviewImportError,
    labeling_config,
    parse_export,
    task_json,
)
from core.tasks.base import Task
from core.warehouse import Warehouse

HUMAN_LABELLED_SET = "human_labels"
DEFAULT_IMAGE_PREFIX = "/data/local-files/?d="


def _tables(conn: duckdb.DuckDBPyConnection) -> set[str]:
    rows = conn.execute("SELECT table_name FROM information_schema.tables").fetchall()
    return {name for (name,) in rows}


def _as_text(column: str, duck_type: str, alias: str = "t") -> str:
    """A task column as `final_labels.value`: a multi-choice set sorted and joined with `|`
    (the form a Label Studio import stores), anything else cast to text."""
    if duck_type.endswith("[]"):
        return f"array_to_string(list_sort({alias}.\"{column}\"), '|')"
    return f'CAST({alias}."{column}" AS VARCHAR)'


def final_labels_sql(present: set[str], tasks: Sequence[Task]) -> str:
    """The view's query over the task tables that exist (task tables appear on first write)."""
    parts: list[str] = []
    for task in tasks:
        table = task.tables.table
        if table not in present:
            continue
        latest = (
            "(SELECT image_id, arg_max({'m': model_id, 'f': task_fingerprint}, created_at) AS k"
            f" FROM vlm_extractions WHERE task = '{task.name}' AND status = 'ok'"
            " GROUP BY image_id)"
        )
        join = "l.image_id = t.image_id AND l.k.m = t.model_id AND l.k.f = t.task_fingerprint"
        for column, duck_type in task.tables.columns:
            parts.append(
                f"SELECT t.image_id, '{task.name}' AS task, '{column}' AS field,"
                f" {_as_text(column, duck_type)} AS value, t.model_id,"
                " NULL::VARCHAR AS list_field, NULL::INTEGER AS idx"
                f' FROM "{table}" t JOIN {latest} l ON {join}'
            )
        for child in task.tables.children:
            if child.table not in present:
                continue
            child_join = (
                "c.image_id = t.image_id AND c.model_id = t.model_id"
                " AND c.task_fingerprint = t.task_fingerprint"
            )
            parts.append(
                f"SELECT t.image_id, '{task.name}', '{child.field}.count',"
                f" CAST(count(c.idx) AS VARCHAR), t.model_id, '{child.field}', NULL"
                f' FROM "{table}" t JOIN {latest} l ON {join}'
                f' LEFT JOIN "{child.table}" c ON {child_join} GROUP BY t.image_id, t.model_id'
            )
            for column, duck_type in child.columns:
                parts.append(
                    f"SELECT t.image_id, '{task.name}',"
                    f" '{child.field}[' || c.idx || '].{column}',"
                    f" {_as_text(column, duck_type, 'c')}, t.model_id, '{child.field}', c.idx"
                    f' FROM "{table}" t JOIN {latest} l ON {join}'
                    f' JOIN "{child.table}" c ON {child_join}'
                )
    model = (
        " UNION ALL ".join(parts)
        if parts
        else "SELECT NULL::VARCHAR AS image_id, NULL::VARCHAR AS task, NULL::VARCHAR AS field,"
        " NULL::VARCHAR AS value, NULL::VARCHAR AS model_id, NULL::VARCHAR AS list_field,"
        " NULL::INTEGER AS idx WHERE false"
    )
    return f"""
    WITH model AS ({model}),
    human AS (
        SELECT image_id, task, field, arg_max(value, reviewed_at) AS value,
               arg_max(reviewer, reviewed_at) AS reviewer, max(reviewed_at) AS reviewed_at
        FROM human_labels GROUP BY image_id, task, field
    ),
    human_counts AS (
        SELECT image_id, task, regexp_extract(field, '^(.*)\\.count$', 1) AS list_field,
               TRY_CAST(value AS INTEGER) AS n
        FROM human WHERE field LIKE '%.count'
    )
    SELECT coalesce(h.image_id, m.image_id) AS image_id, coalesce(h.task, m.task) AS task,
           coalesce(h.field, m.field) AS field, coalesce(h.value, m.value) AS value,
           CASE WHEN h.value IS NOT NULL THEN 'human' ELSE 'model' END AS provenance,
           m.value AS model_value, m.model_id, h.reviewer, h.reviewed_at
    FROM model m
    FULL OUTER JOIN human h ON h.image_id = m.image_id AND h.task = m.task AND h.field = m.field
    WHERE h.value IS NOT NULL OR m.idx IS NULL OR NOT EXISTS (
        SELECT 1 FROM human_counts hc
        WHERE hc.image_id = m.image_id AND hc.task = m.task AND hc.list_field = m.list_field
          AND m.idx >= hc.n
    )
    """


def ensure_final_labels_view(conn: duckdb.DuckDBPyConnection, tasks: Sequence[Task] = ()) -> None:
    """(Re)create `final_labels` over the task tables present now (inside the caller's
    transaction); called by every queue write and review import, so new tasks join it."""
    conn.execute(
        "CREATE OR REPLACE VIEW final_labels AS "
        + final_labels_sql(_tables(conn), list(tasks) or spec_tasks())
    )


# -- export ------------------------------------------------------------------------------------


def image_url(prefix: str, drop_id: str, path: str) -> str:
    """`prefix` + the image's path under the drop root, URL-quoted (Label Studio local files:
    `/data/local-files/?d=` with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT = the drop root)."""
    del drop_id  # paths in image_files are already relative to the drop root
    return prefix + quote(path)


def export_tasks(
    warehouse: Warehouse,
    drop_id: str,
    *,
    tasks: Sequence[Task] | None = None,
    image_prefix: str = DEFAULT_IMAGE_PREFIX,
) -> list[dict[str, Any]]:
    """The drop's review queue as Label Studio tasks, in queue order, with the VLM's answers."""
    tasks = list(tasks or spec_tasks())
    queue = warehouse.rows(
        "SELECT rank, image_id, path, score, reasons, disagree_fields, failed_tasks,"
        " conflict_fields, zero_shot_margin, vlm_model_id"
        " FROM review_queue WHERE drop_id = ? ORDER BY rank",
        [drop_id],
    )
    if not queue:
        raise ValueError(
            f"drop {drop_id!r} has no review queue rows: materialize `review_queue` for it first"
        )
    answers: dict[tuple[str, str], dict[str, Any]] = {}
    with warehouse.reader() as conn:
        conn.register("queued", pa.table({"image_id": pa.array([r[1] for r in queue])}))
        rows = conn.execute(
            "SELECT x.image_id, x.task, arg_max(x.parsed_json, x.created_at)"
            " FROM vlm_extractions x JOIN queued USING (image_id)"
            " WHERE x.status = 'ok' AND x.model_id = ? AND list_contains(?, x.task_fingerprint)"
            " GROUP BY x.image_id, x.task",
            [queue[0][9] or "", [t.fingerprint for t in tasks]],
        ).fetchall()
        conn.unregister("queued")
    for image_id, task_name, parsed in rows:
        answers[(image_id, task_name)] = json.loads(parsed)
    out = []
    for rank, image_id, path, score, reasons, disagree, failed, conflict, margin, model in queue:
        why = list(reasons)
        details = [*disagree, *failed, *conflict]
        if margin is not None:
            details.append(f"zero-shot margin {margin:.3f}")
        out.append(
            task_json(
                image_url=image_url(image_prefix, drop_id, path),
                image_id=image_id,
                drop_id=drop_id,
                path=path,
                rank=int(rank),
                score=float(score),
                reasons=", ".join(why) + (" — " + "; ".join(details) if details else ""),
                model_id=model,
                answers={
                    t: answers[(image_id, t.name)] for t in tasks if (image_id, t.name) in answers
                },
            )
        )
    return out


def spec_tasks(spec: LabelsSpec | None = None) -> list[Task]:
    """The tasks of a labeling spec (default: the current one), in spec order."""
    return list(build_tasks(current_spec() if spec is None else spec).values())


def write_export(
    warehouse: Warehouse,
    drop_id: str,
    out: Path,
    *,
    image_prefix: str = DEFAULT_IMAGE_PREFIX,
    spec: LabelsSpec | None = None,
) -> tuple[Path, Path, int]:
    """Write `<out>` (tasks JSON) and `<out stem>.label_config.xml` for the spec's tasks
    (default: the current spec); returns both and the count."""
    tasks = spec_tasks(spec)
    items = export_tasks(warehouse, drop_id, tasks=tasks, image_prefix=image_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = out.with_name(out.stem + ".label_config.xml")
    out.write_text(json.dumps(items, indent=1) + "\n", encoding="utf-8")
    config.write_text(labeling_config(tasks), encoding="utf-8")
    return out, config, len(items)


# -- import ------------------------------------------------------------------------------------


def write_human_labels(
    warehouse: Warehouse,
    labels: Sequence[HumanLabel],
    *,
    source_file: str,
    tasks: Sequence[Task] = (),
) -> dict[str, int]:
    """Upsert the labels in one transaction; an unknown image rejects the whole file."""
    now = datetime.now(UTC)
    batch = pa.table(
        {
            "image_id": [h.image_id for h in labels],
            "task": [h.task for h in labels],
            "field": [h.field for h in labels],
            "value": [h.value for h in labels],
            "reviewer": [h.reviewer for h in labels],
            "reviewed_at": pa.array([h.reviewed_at for h in labels], pa.timestamp("us", "UTC")),
            "source_file": [source_file] * len(labels),
            "annotation_id": pa.array([h.annotation_id for h in labels], pa.int64()),
            "imported_at": pa.array([now] * len(labels), pa.timestamp("us", "UTC")),
        }
    )

    def write(conn: duckdb.DuckDBPyConnection) -> int:
        conn.register("review_batch", batch)
        try:
            unknown = conn.execute(
                "SELECT DISTINCT b.image_id FROM review_batch b"
                " WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.image_id = b.image_id)"
                " ORDER BY 1 LIMIT 5"
            ).fetchall()
            if unknown:
                raise ReviewImportError(
                    f"{source_file}: rejected, nothing imported: images not in this warehouse "
                    f"(a file from another pipeline?): {[u for (u,) in unknown]}"
                )
            newer = conn.execute(
                "SELECT count(*) FROM review_batch b JOIN human_labels h USING"
                " (image_id, task, field, reviewer) WHERE h.reviewed_at > b.reviewed_at"
            ).fetchone()[0]
            conn.execute(
                "DELETE FROM human_labels h USING review_batch b"
                " WHERE h.image_id = b.image_id AND h.task = b.task AND h.field = b.field"
                " AND h.reviewer = b.reviewer AND h.reviewed_at <= b.reviewed_at"
            )
            conn.execute(
                "INSERT INTO human_labels SELECT b.* FROM review_batch b WHERE NOT EXISTS ("
                " SELECT 1 FROM human_labels h WHERE h.image_id = b.image_id AND h.task = b.task"
                " AND h.field = b.field AND h.reviewer = b.reviewer)"
            )
        finally:
            conn.unregister("review_batch")
        ensure_final_labels_view(conn, tasks)
        return int(newer)

    newer = warehouse.write(write)
    return {"labels": len(labels) - int(newer), "kept_newer": int(newer)}


def import_reviews(
    warehouse: Warehouse, path: Path, spec: LabelsSpec | None = None
) -> dict[str, int]:
    """Validate a Label Studio JSON export whole against the spec's tasks (default: the current
    spec), then write it whole (or nothing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ReviewImportError(f"{path}: not UTF-8 text: {error}") from error
    tasks = spec_tasks(spec)
    labels = parse_export(text, tasks, source=str(path))
    counts = write_human_labels(warehouse, labels, source_file=str(path), tasks=tasks)
    counts["images"] = len({h.image_id for h in labels})
    return counts


# -- evaluation --------------------------------------------------------------------------------


def human_labelled_set(warehouse: Warehouse) -> LabelledSet | None:
    """`human_labels` as a labelled set (fields that evaluation knows), latest value per image
    and field over reviewers; None when there are none."""
    with warehouse.reader() as conn:
        if "human_labels" not in _tables(conn):
            return None
        rows = conn.execute(
            "SELECT h.image_id, h.task, h.field, arg_max(h.value, h.reviewed_at), "
            " min(i.first_path) FROM human_labels h JOIN images i USING (image_id)"
            " GROUP BY h.image_id, h.task, h.field"
        ).fetchall()
    fields = spec_fields(current_spec())
    by_column = {(f.task, f.column): f for f in fields if f.task and f.column}
    items = [
        LabelledImage(
            image_id=image_id, path=path, field=by_column[(task, field)].name, label=value
        )
        for image_id, task, field, value, path in rows
        if (task, field) in by_column and value in by_column[(task, field)].values
    ]
    if not items:
        return None
    items.sort(key=lambda item: (item.field, item.path))
    return LabelledSet(source=HUMAN_LABELLED_SET, items=items)
