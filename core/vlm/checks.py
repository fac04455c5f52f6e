"""Checks of the `vlm_extractions` asset: coverage, validity and truncation rates (from
`vlm_extractions`), and what the typed `task_<name>` tables hold (schema enums, entity counts).

`assets/extraction.py` declares them.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, Field

from core.copies import UNREADABLE_STATUSES
from core.quality.outcome import (
    SAMPLE_ROWS,
    CheckOutcome,
    drop_image_count,
    execute,
    ident,
    missing_table,
    no_images,
    records,
    scalar,
    share,
)
from core.warehouse import Warehouse
from core.warehouse.queries import DROP_IMAGE_PATHS, DROP_IMAGES, table_exists

EXTRACTION_COVERAGE = "extraction_coverage"
EXTRACTION_VALIDITY = "extraction_validity_rate"
EXTRACTION_TRUNCATION = "extraction_truncation_rate"
EXTRACTION_ENUMS = "extraction_enum_values"
EXTRACTION_ENTITY_COUNTS = "extraction_entity_counts"


class ExtractionScope(BaseModel):
    """Which extraction rows a check looks at: a task, a model, optionally one task version."""

    task: str
    model_id: str
    task_fingerprint: str | None = None  # None: rows of any version count

    def where(self, alias: str) -> str:
        clause = f"{alias}.model_id = $model"
        return clause + (
            f" AND {alias}.task_fingerprint = $fingerprint" if self.task_fingerprint else ""
        )

    def params(self, drop_id: str) -> dict[str, Any]:
        params: dict[str, Any] = {"drop": drop_id, "task": self.task, "model": self.model_id}
        if self.task_fingerprint:
            params["fingerprint"] = self.task_fingerprint
        return params


def _status_counts(warehouse: Warehouse, drop_id: str, scope: ExtractionScope) -> dict[str, int]:
    """Latest status per image of the drop: a later retry row supersedes an earlier one."""
    with warehouse.reader() as conn:
        rows = execute(
            conn,
            f"""
            SELECT status, count(*) FROM (
                SELECT image_id, arg_max(status, created_at) AS status
                FROM vlm_extractions x JOIN ({DROP_IMAGES}) d USING (image_id)
                WHERE x.task = $task AND {scope.where("x")} GROUP BY image_id
            ) GROUP BY status
            """,
            scope.params(drop_id),
        ).fetchall()
    return {str(status): int(count) for status, count in rows}


def extraction_coverage(warehouse: Warehouse, drop_id: str, scope: ExtractionScope) -> CheckOutcome:
    """Every image of the drop has a vlm_extractions row (of any status) for the task and model."""
    params = scope.params(drop_id)
    with warehouse.reader() as conn:
        if not table_exists(conn, "vlm_extractions"):
            return missing_table(conn, drop_id, EXTRACTION_COVERAGE, "vlm_extractions")
        images = scalar(conn, f"SELECT count(*) FROM ({DROP_IMAGES})", params)
        missing = records(
            conn,
            f"""
            SELECT d.image_id, d.path FROM ({DROP_IMAGE_PATHS}) d
            WHERE NOT EXISTS (
                SELECT 1 FROM vlm_extractions x
                WHERE x.image_id = d.image_id AND x.task = $task AND {scope.where("x")}
            )
            ORDER BY d.path
            """,
            params,
        )
    covered = images - len(missing)
    return CheckOutcome(
        check_name=EXTRACTION_COVERAGE,
        passed=not missing,
        severity="ERROR",
        summary=f"{scope.task}/{scope.model_id}: {covered} of {images} images have a result row",
        value=share(covered, images),
        better="higher",
        threshold=1.0,
        counts={"images": int(images), "covered": int(covered), "missing": len(missing)},
        offending=missing[:SAMPLE_ROWS],
    )


def _failures_sample(
    warehouse: Warehouse, drop_id: str, scope: ExtractionScope, statuses: Sequence[str]
) -> list[dict]:
    with warehouse.reader() as conn:
        return records(
            conn,
            f"""
            SELECT x.image_id, x.status, left(coalesce(x.error, ''), 200) AS error,
                   left(coalesce(x.raw_text, ''), 200) AS raw_text
            FROM vlm_extractions x JOIN ({DROP_IMAGES}) d USING (image_id)
            WHERE x.task = $task AND {scope.where("x")} AND list_contains($statuses, x.status)
            ORDER BY x.created_at DESC, x.image_id LIMIT {SAMPLE_ROWS}
            """,
            {**scope.params(drop_id), "statuses": list(statuses)},
        )


def extraction_validity(
    warehouse: Warehouse,
    drop_id: str,
    scope: ExtractionScope,
    *,
    error_below: float = 0.5,
    warn_below: float = 0.9,
) -> CheckOutcome:
    """Share of images whose latest result is `ok`: an error below one bound, a warning below the other."""
    if not 0 <= error_below <= warn_below <= 1:
        raise ValueError("need 0 <= error_below <= warn_below <= 1")
    counts = _status_counts(warehouse, drop_id, scope)
    # Images no file still held the bytes of never reached the model: counted, not judged.
    unreadable = sum(counts.get(status, 0) for status in UNREADABLE_STATUSES)
    total = sum(counts.values()) - unreadable
    rate = share(counts.get("ok", 0), total)
    if rate is None and unreadable:
        passed, severity, threshold = True, "WARN", warn_below
        summary = f"{scope.task}/{scope.model_id}: all {unreadable} images are unavailable"
    elif rate is None:
        passed, severity, threshold = False, "ERROR", error_below
        summary = f"{scope.task}/{scope.model_id}: no extraction rows for this drop"
    elif rate < error_below:
        passed, severity, threshold = False, "ERROR", error_below
        summary = f"{scope.task}/{scope.model_id}: validity {rate:.1%} is below {error_below:.0%}"
    else:
        passed, severity, threshold = rate >= warn_below, "WARN", warn_below
        summary = (
            f"{scope.task}/{scope.model_id}: validity {rate:.1%} (warn below {warn_below:.0%})"
        )
    if unreadable and rate is not None:
        summary += f"; {unreadable} images unavailable, not judged"
    return CheckOutcome(
        check_name=EXTRACTION_VALIDITY,
        passed=passed,
        severity=severity,
        summary=summary,
        value=rate,
        better="higher",
        threshold=threshold,
        counts={"images": total + unreadable, **counts},
        offending=[]
        if passed
        else _failures_sample(
            warehouse, drop_id, scope, ["invalid", "truncated", "rejected", "error"]
        ),
    )


def extraction_truncation(
    warehouse: Warehouse, drop_id: str, scope: ExtractionScope, *, max_rate: float = 0.05
) -> CheckOutcome:
    """Share of images whose latest result hit the token limit: raise the budget or fix the prompt."""
    counts = _status_counts(warehouse, drop_id, scope)
    unreadable = sum(counts.get(status, 0) for status in UNREADABLE_STATUSES)
    total = sum(counts.values()) - unreadable  # images that reached the model
    rate = share(counts.get("truncated", 0), total) or 0.0
    passed = rate <= max_rate
    return CheckOutcome(
        check_name=EXTRACTION_TRUNCATION,
        passed=passed,
        severity="WARN",
        summary=f"{scope.task}/{scope.model_id}: {counts.get('truncated', 0)} of {total} truncated"
        f" ({rate:.1%}; warn above {max_rate:.0%})",
        value=rate,
        threshold=max_rate,
        counts={"images": total + unreadable, **counts},
        offending=[] if passed else _failures_sample(warehouse, drop_id, scope, ["truncated"]),
    )


class TaskConstraints(BaseModel):
    """What a task's schema allows, per table: enum columns and list-length bounds of child tables."""

    enums: dict[str, dict[str, list[str]]] = Field(
        default_factory=dict
    )  # table -> column -> values
    # table -> the enum columns that are lists (multi-label, VARCHAR[]): each element is checked
    list_columns: dict[str, list[str]] = Field(default_factory=dict)
    entity_bounds: dict[str, tuple[int, int | None]] = Field(default_factory=dict)  # child table


def _allowed_values(annotation: Any) -> list[str] | None:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return [str(v) for v in typing.get_args(annotation)]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None) and (values := _allowed_values(arg)) is not None:
                return values
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(member.value) for member in annotation]
    return None


def _list_allowed_values(annotation: Any) -> list[str] | None:
    """The values of a list of enum values (a multi-label field, `X | None` too), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None) and (values := _list_allowed_values(arg)) is not None:
                return values
        return None
    if typing.get_origin(annotation) is typing.Annotated:
        return _list_allowed_values(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return _allowed_values(item)
    return None


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def task_constraints(task: str, model: type[BaseModel]) -> TaskConstraints:
    """Derive the enum and per-entity constraints of `task_<task>` tables from the task's model."""
    parent = f"task_{task}"
    constraints = TaskConstraints()

    def enums_of(table: str, item: type[BaseModel]) -> None:
        for name, info in item.model_fields.items():
            if (values := _allowed_values(info.annotation)) is not None:
                constraints.enums.setdefault(table, {})[name] = values
            elif (values := _list_allowed_values(info.annotation)) is not None:
                constraints.enums.setdefault(table, {})[name] = values
                constraints.list_columns.setdefault(table, []).append(name)

    enums_of(parent, model)
    for name, info in model.model_fields.items():
        if (item := _list_item_model(info.annotation)) is None:
            continue
        child = f"{parent}__{name}"
        low = next(
            (m.min_length for m in info.metadata if isinstance(m, annotated_types.MinLen)), 0
        )
        high = next(
            (m.max_length for m in info.metadata if isinstance(m, annotated_types.MaxLen)), None
        )
        constraints.entity_bounds[child] = (low, high)
        enums_of(child, item)
    return constraints


def extraction_enums(
    warehouse: Warehouse, drop_id: str, scope: ExtractionScope, constraints: TaskConstraints
) -> CheckOutcome:
    """Typed task rows hold only values the task's schema allows (a guard on constrained decoding)."""
    params = scope.params(drop_id)
    offending: list[dict] = []
    checked = 0
    with warehouse.reader() as conn:
        for table, columns in sorted(constraints.enums.items()):
            if not table_exists(conn, table):
                return missing_table(conn, drop_id, EXTRACTION_ENUMS, table)
            for column, values in sorted(columns.items()):
                # A list column (multi-label) is checked element by element: one row per element.
                value = (
                    f"unnest(t.{ident(column)})"
                    if column in constraints.list_columns.get(table, [])
                    else f"t.{ident(column)}"
                )
                checked += scalar(
                    conn,
                    f"SELECT count(*) FROM {ident(table)} t JOIN ({DROP_IMAGES}) d USING (image_id)"
                    f" WHERE {scope.where('t')}",
                    params,
                )
                offending += records(
                    conn,
                    f"""
                    SELECT "table", "column", image_id, value FROM (
                        SELECT '{table}' AS "table", '{column}' AS "column", t.image_id,
                               CAST({value} AS VARCHAR) AS value
                        FROM {ident(table)} t JOIN ({DROP_IMAGES}) d USING (image_id)
                        WHERE {scope.where("t")}
                    )
                    WHERE value IS NOT NULL AND NOT list_contains($allowed, value)
                    ORDER BY image_id, value
                    """,
                    {**params, "allowed": values},
                )
    return CheckOutcome(
        check_name=EXTRACTION_ENUMS,
        passed=not offending,
        severity="ERROR",
        summary=f"{scope.task}/{scope.model_id}: {len(offending)} values outside the schema's enums",
        value=float(len(offending)),
        threshold=0.0,
        counts={"values_checked": int(checked), "outside_enum": len(offending)},
        offending=offending[:SAMPLE_ROWS],
        details={"enums": constraints.enums},
    )


def extraction_entity_counts(
    warehouse: Warehouse, drop_id: str, scope: ExtractionScope, constraints: TaskConstraints
) -> CheckOutcome:
    """Child rows per extracted image (entities per image) lie within the list's bounds."""
    params = scope.params(drop_id)
    parent = f"task_{scope.task}"
    offending: list[dict] = []
    per_table: dict[str, int] = {}
    with warehouse.reader() as conn:
        for table, (low, high) in sorted(constraints.entity_bounds.items()):
            for needed in (parent, table):
                if not table_exists(conn, needed):
                    return missing_table(conn, drop_id, EXTRACTION_ENTITY_COUNTS, needed)
            found = records(
                conn,
                f"""
                SELECT '{table}' AS "table", p.image_id, count(c.image_id) AS entities
                FROM {ident(parent)} p JOIN ({DROP_IMAGES}) d USING (image_id)
                LEFT JOIN {ident(table)} c ON c.image_id = p.image_id
                    AND c.model_id = p.model_id AND c.task_fingerprint = p.task_fingerprint
                WHERE {scope.where("p")}
                GROUP BY p.image_id
                HAVING count(c.image_id) < $low OR count(c.image_id) > coalesce($high, 2147483647)
                ORDER BY entities DESC, p.image_id
                """,
                {**params, "low": low, "high": high},
            )
            per_table[table] = len(found)
            offending += found
    return CheckOutcome(
        check_name=EXTRACTION_ENTITY_COUNTS,
        passed=not offending,
        severity="ERROR",
        summary=f"{scope.task}/{scope.model_id}: {len(offending)} images with entity counts out of bounds",
        value=float(len(offending)),
        threshold=0.0,
        counts=per_table,
        offending=offending[:SAMPLE_ROWS],
        details={"bounds": {t: list(b) for t, b in constraints.entity_bounds.items()}},
    )


def extraction_checks(
    warehouse: Warehouse,
    drop_id: str,
    scope: ExtractionScope,
    model: type[BaseModel],
    *,
    error_below: float = 0.5,
    warn_below: float = 0.9,
    max_truncation: float = 0.05,
) -> list[CheckOutcome]:
    """All extraction checks of one task and model, constraints derived from the task's model
    (`core.tasks.registry`: pass `task.model`)."""
    constraints = task_constraints(scope.task, model)
    with warehouse.reader() as conn:
        images = drop_image_count(conn, drop_id)
    if not images:
        # Every file of the drop was rejected: no image was sent, no task table need exist.
        return [
            no_images(name, subject=f"{scope.task}/{scope.model_id}")
            for name in (
                EXTRACTION_COVERAGE,
                EXTRACTION_VALIDITY,
                EXTRACTION_TRUNCATION,
                EXTRACTION_ENUMS,
                EXTRACTION_ENTITY_COUNTS,
            )
        ]
    return [
        extraction_coverage(warehouse, drop_id, scope),
        extraction_validity(
            warehouse, drop_id, scope, error_below=error_below, warn_below=warn_below
        ),
        extraction_truncation(warehouse, drop_id, scope, max_rate=max_truncation),
        extraction_enums(warehouse, drop_id, scope, constraints),
        extraction_entity_counts(warehouse, drop_id, scope, constraints),
    ]
