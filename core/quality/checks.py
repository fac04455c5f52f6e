"""SQL-backed data-quality checks, one function per check, each scoped to one drop (partition).

Every check returns a `CheckOutcome`: passed or not, what a failure means (`severity`), the measured
value and its threshold, counts, and a small sample of offending rows. Assets turn outcomes into
`dg.AssetCheckResult`s (see `assets/quality.py`) and `record_outcomes` keeps them in
`quality_results` for SQL over time. The checks only read; the writer is the one write.

The drop's images are `SELECT DISTINCT image_id FROM image_files WHERE drop_id = ?`; model tables
follow the data contracts in docs/quality.md.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import annotated_types
import duckdb
from pydantic import BaseModel, Field

from core.copies import UNREADABLE_STATUSES
from core.ingest.accounting import Accounting
from core.quality import drift
from core.quality.fields import LabelField
from core.quality.metrics import confusion_matrix
from core.warehouse import Warehouse

Severity = Literal["ERROR", "WARN"]
SAMPLE_ROWS = 10

# Check names: the asset that writes the data declares them in its check_specs.
NOTHING_LOST = "nothing_lost"
UNIQUE_IMAGE_ID = "unique_image_id"
REJECTION_RATE = "rejection_rate"
EMBEDDING_ONE_PER_IMAGE = "embedding_one_per_image"
EMBEDDING_DIMENSION = "embedding_dimension"
EMBEDDING_FINITE = "embedding_finite"
EMBEDDING_UNIT_NORM = "embedding_unit_norm"
ZERO_SHOT_ONE_PER_IMAGE = "zero_shot_one_per_image"
ZERO_SHOT_PROBABILITIES = "zero_shot_probabilities"
EXTRACTION_COVERAGE = "extraction_coverage"
EXTRACTION_VALIDITY = "extraction_validity_rate"
EXTRACTION_TRUNCATION = "extraction_truncation_rate"
EXTRACTION_ENUMS = "extraction_enum_values"
EXTRACTION_ENTITY_COUNTS = "extraction_entity_counts"
LABEL_DRIFT = "label_drift"
AGREEMENT = "clip_vlm_agreement"
LABELLED_INGESTED = "labelled_images_ingested"

DROP_IMAGES = "SELECT DISTINCT image_id FROM image_files WHERE drop_id = $drop"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_PARAMETER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class CheckOutcome(BaseModel):
    """What one check found; JSON-serialisable so it lands as is in `quality_results.details`."""

    check_name: str
    passed: bool
    severity: Severity  # what a failure means: ERROR blocks (when declared blocking), WARN informs
    summary: str
    value: float | None = None
    threshold: float | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    offending: list[dict[str, Any]] = Field(default_factory=list)  # at most SAMPLE_ROWS
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_offenders(
        cls,
        check_name: str,
        offenders: Sequence[dict[str, Any]],
        *,
        summary: str,
        counts: dict[str, int],
        severity: Severity = "ERROR",
        threshold: float = 0.0,
    ) -> CheckOutcome:
        """The common shape: the check passes when no row offends; the value is how many do."""
        return cls(
            check_name=check_name,
            passed=not offenders,
            severity=severity,
            summary=summary,
            value=float(len(offenders)),
            threshold=threshold,
            counts=counts,
            offending=list(offenders[:SAMPLE_ROWS]),
        )


def _ident(name: str) -> str:
    """Table and column names come from code, never users; refuse anything but plain names."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _execute(
    conn: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any]
) -> duckdb.DuckDBPyConnection:
    """Execute with the named parameters `sql` uses (DuckDB refuses unused ones)."""
    used = set(_PARAMETER.findall(sql))
    return conn.execute(sql, {k: v for k, v in params.items() if k in used})


def _records(conn: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any]) -> list[dict]:
    cursor = _execute(conn, sql, params)
    names = [column[0] for column in cursor.description]
    return [
        {name: _jsonable(value) for name, value in zip(names, row, strict=True)}
        for row in cursor.fetchall()
    ]


def _scalar(conn: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any]) -> Any:
    row = _execute(conn, sql, params).fetchone()
    return row[0] if row else None


def _table_exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(
        _scalar(
            conn,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = $t",
            {"t": table},
        )
    )


def _missing_table(check_name: str, table: str, severity: Severity = "ERROR") -> CheckOutcome:
    return CheckOutcome(
        check_name=check_name,
        passed=False,
        severity=severity,
        summary=f"table {table} does not exist: has its asset ever run?",
    )


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# ---------------------------------------------------------------------------------------------
# images


def nothing_lost(accounting: Accounting) -> CheckOutcome:
    """The ingest accounting (core/ingest/accounting.py) as an outcome."""
    return CheckOutcome(
        check_name=NOTHING_LOST,
        passed=accounting.balanced,
        severity="ERROR",
        summary=(
            f"{accounting.files_seen} files seen = {accounting.image_file_rows} image_files"
            f" + {accounting.rejected_rows} rejected_files rows"
            if accounting.balanced
            else f"{accounting.files_seen} files seen: {len(accounting.missing)} missing,"
            f" {len(accounting.in_both)} counted twice, {len(accounting.shared_keys)} row keys"
            " shared by several files"
        ),
        value=float(
            len(accounting.missing) + len(accounting.in_both) + len(accounting.shared_keys)
        ),
        threshold=0.0,
        counts={
            "files_seen": accounting.files_seen,
            "image_file_rows": accounting.image_file_rows,
            "rejected_rows": accounting.rejected_rows,
            "missing": len(accounting.missing),
            "counted_twice": len(accounting.in_both),
            "shared_keys": len(accounting.shared_keys),
        },
        offending=[{"path": p, "problem": "missing"} for p in accounting.missing[:SAMPLE_ROWS]]
        + [{"path": p, "problem": "counted_twice"} for p in accounting.in_both[:SAMPLE_ROWS]]
        + [{"path": p, "problem": "shared_key"} for p in accounting.shared_keys[:SAMPLE_ROWS]],
    )


def unique_image_ids(warehouse: Warehouse, drop_id: str) -> CheckOutcome:
    """Image ids of the drop are SHA-256 hex, unique in `images`, and first seen exactly once.

    `images` has a primary key, so the second clause guards against schema changes; the third
    catches an ingest bug that marks a known image as new again (two non-duplicate file rows).
    """
    params = {"drop": drop_id}
    with warehouse.reader() as conn:
        offending = _records(
            conn,
            f"""
            WITH drop_images AS ({DROP_IMAGES}),
            problems AS (
                SELECT d.image_id, 'not a sha256 hex digest' AS problem FROM drop_images d
                WHERE NOT regexp_full_match(d.image_id, '[0-9a-f]{{64}}')
                UNION ALL
                SELECT i.image_id, 'repeated in images (' || count(*) || ' rows)'
                FROM images i JOIN drop_images USING (image_id) GROUP BY i.image_id
                HAVING count(*) > 1
                UNION ALL
                SELECT f.image_id, 'first seen at ' || count(*) || ' paths: '
                    || string_agg(f.drop_id || ':' || f.path, ', ' ORDER BY f.drop_id, f.path)
                FROM image_files f JOIN drop_images USING (image_id)
                WHERE NOT f.is_duplicate GROUP BY f.image_id HAVING count(*) > 1
                UNION ALL
                SELECT d.image_id, 'no images row' FROM drop_images d
                ANTI JOIN images i USING (image_id)
            )
            SELECT * FROM problems ORDER BY image_id, problem
            """,
            params,
        )
        images = _scalar(conn, f"SELECT count(*) FROM ({DROP_IMAGES})", params)
    bad_ids = len({row["image_id"] for row in offending})
    return CheckOutcome(
        check_name=UNIQUE_IMAGE_ID,
        passed=not offending,
        severity="ERROR",
        summary=f"{bad_ids} of {images} image ids have problems"
        if offending
        else f"{images} unique image ids",
        value=float(bad_ids),
        threshold=0.0,
        counts={"images": int(images), "offending_images": bad_ids, "problems": len(offending)},
        offending=offending[:SAMPLE_ROWS],
    )


def rejection_rate(warehouse: Warehouse, drop_id: str, *, max_rate: float = 0.2) -> CheckOutcome:
    """Rejected files / files recorded for the drop; a high rate means a bad export or wrong folder."""
    params = {"drop": drop_id}
    with warehouse.reader() as conn:
        accepted = _scalar(conn, "SELECT count(*) FROM image_files WHERE drop_id = $drop", params)
        rejected = _scalar(
            conn, "SELECT count(*) FROM rejected_files WHERE drop_id = $drop", params
        )
        reasons = _records(
            conn,
            "SELECT reason, count(*) AS files, min(path) AS example FROM rejected_files"
            " WHERE drop_id = $drop GROUP BY reason ORDER BY files DESC, reason",
            params,
        )
    rate = _rate(rejected, accepted + rejected) or 0.0
    return CheckOutcome(
        check_name=REJECTION_RATE,
        passed=rate <= max_rate,
        severity="WARN",
        summary=f"{rejected} of {accepted + rejected} files rejected ({rate:.1%}; warn above {max_rate:.0%})",
        value=rate,
        threshold=max_rate,
        counts={
            "files": int(accepted + rejected),
            "accepted": int(accepted),
            "rejected": int(rejected),
        },
        offending=reasons[:SAMPLE_ROWS],
    )


# ---------------------------------------------------------------------------------------------
# embeddings (clip_embeddings: image_id, model_id, kind, dim, embedding FLOAT[D] or FLOAT[])

_VECTOR = "CAST(e.embedding AS DOUBLE[])"


def embedding_checks(
    warehouse: Warehouse,
    drop_id: str,
    model_id: str,
    *,
    expected_dim: int,
    kind: str = "global",
    norm_tolerance: float = 1e-3,
    table: str = "clip_embeddings",
) -> list[CheckOutcome]:
    """One row per image and model, the model's dimension, finite values, unit L2 norm."""
    names = (EMBEDDING_ONE_PER_IMAGE, EMBEDDING_DIMENSION, EMBEDDING_FINITE, EMBEDDING_UNIT_NORM)
    params = {"drop": drop_id, "model": model_id, "kind": kind}
    with warehouse.reader() as conn:
        if not _table_exists(conn, table):
            return [_missing_table(name, table) for name in names]
        rows = f"""
            SELECT e.* FROM {_ident(table)} e JOIN ({DROP_IMAGES}) d USING (image_id)
            WHERE e.model_id = $model AND e.kind = $kind
        """
        images = _scalar(conn, f"SELECT count(*) FROM ({DROP_IMAGES})", params)
        per_image = _records(
            conn,
            f"""
            SELECT d.image_id, count(e.image_id) AS rows, any_value(c.status) AS unreadable
            FROM ({DROP_IMAGES}) d LEFT JOIN ({rows}) e USING (image_id)
            LEFT JOIN clip_failures c ON c.image_id = d.image_id AND c.model_id = $model
            GROUP BY d.image_id HAVING count(e.image_id) <> 1 ORDER BY rows, d.image_id
            """,
            params,
        )
        # No file of the image still holds its bytes (core/copies.py): counted, not failed.
        unreadable = [r for r in per_image if r["rows"] == 0 and r["unreadable"] is not None]
        per_image = [
            {"image_id": r["image_id"], "rows": r["rows"]}
            for r in per_image
            if not (r["rows"] == 0 and r["unreadable"] is not None)
        ]
        dims = _records(
            conn,
            f"""
            SELECT e.image_id, e.dim, len({_VECTOR}) AS length FROM ({rows}) e
            WHERE e.dim IS DISTINCT FROM $dim OR len({_VECTOR}) IS DISTINCT FROM $dim
            ORDER BY e.image_id
            """,
            {**params, "dim": expected_dim},
        )
        stats = f"""
            SELECT e.image_id,
                   list_bool_and(list_transform({_VECTOR}, lambda x: isfinite(x))) AS finite,
                   sqrt(list_sum(list_transform({_VECTOR}, lambda x: x * x))) AS norm
            FROM ({rows}) e
        """
        not_finite = _records(
            conn, f"SELECT image_id FROM ({stats}) WHERE NOT finite ORDER BY image_id", params
        )
        off_norm = _records(
            conn,
            f"""
            SELECT image_id, norm FROM ({stats})
            WHERE finite AND abs(norm - 1) > $tol ORDER BY abs(norm - 1) DESC, image_id
            """,
            {**params, "tol": norm_tolerance},
        )
        total_rows = _scalar(conn, f"SELECT count(*) FROM ({rows})", params)
    missing = sum(1 for row in per_image if row["rows"] == 0)
    repeated = len(per_image) - missing
    counts = {"images": int(images), "rows": int(total_rows)}
    subject = f"{model_id} ({kind})"
    unavailable = len(unreadable)
    aside = f"; {unavailable} unavailable (no file holds their bytes)" if unavailable else ""
    return [
        CheckOutcome.from_offenders(
            EMBEDDING_ONE_PER_IMAGE,
            per_image,
            summary=f"{subject}: {missing} images without and {repeated} with several embeddings"
            + aside
            if per_image
            else f"{subject}: one embedding for each of {images - unavailable} images" + aside,
            counts={**counts, "missing": missing, "repeated": repeated, "unavailable": unavailable},
        ),
        CheckOutcome.from_offenders(
            EMBEDDING_DIMENSION,
            dims,
            summary=f"{subject}: {len(dims)} embeddings are not {expected_dim}-dimensional",
            threshold=float(expected_dim),
            counts={**counts, "wrong_dimension": len(dims)},
        ),
        CheckOutcome.from_offenders(
            EMBEDDING_FINITE,
            not_finite,
            summary=f"{subject}: {len(not_finite)} embeddings hold NaN or infinity",
            counts={**counts, "not_finite": len(not_finite)},
        ),
        CheckOutcome.from_offenders(
            EMBEDDING_UNIT_NORM,
            off_norm,
            summary=f"{subject}: {len(off_norm)} embeddings have |norm - 1| > {norm_tolerance}",
            threshold=norm_tolerance,
            counts={**counts, "off_norm": len(off_norm)},
        ),
    ]


def merge_outcomes(parts: Mapping[str, Sequence[CheckOutcome]], key: str) -> list[CheckOutcome]:
    """One outcome per check name from outcomes of several subjects (kinds, tasks, label sets).

    A Dagster asset declares each check once, so per-subject outcomes are folded: passed when
    every subject passed, the worst failing severity, counts summed, offending rows tagged with
    their subject (`key`), and each subject's details kept under `parts`.
    """
    by_name: dict[str, list[tuple[str, CheckOutcome]]] = {}
    for subject, outcomes in parts.items():
        for outcome in outcomes:
            by_name.setdefault(outcome.check_name, []).append((subject, outcome))
    merged = []
    for name, items in by_name.items():
        if len(items) == 1:
            merged.append(items[0][1])
            continue
        failed = [o for _, o in items if not o.passed]
        severity: Severity = (
            "ERROR"
            if any(o.severity == "ERROR" for o in failed or [o for _, o in items])
            else "WARN"
        )
        counts: dict[str, int] = {}
        for _, outcome in items:
            for count, n in outcome.counts.items():
                counts[count] = counts.get(count, 0) + n
        values = [o.value for _, o in items if o.value is not None]
        worst = failed[0] if failed else items[0][1]
        merged.append(
            CheckOutcome(
                check_name=name,
                passed=not failed,
                severity=severity,
                summary="; ".join(o.summary for _, o in items),
                value=worst.value if worst.value is not None else (values[0] if values else None),
                threshold=worst.threshold,
                counts=counts,
                offending=[{key: subject, **row} for subject, o in items for row in o.offending][
                    :SAMPLE_ROWS
                ],
                details={"parts": {subject: o.details for subject, o in items if o.details}},
            )
        )
    return merged


def embedding_checks_by_kind(
    warehouse: Warehouse,
    drop_id: str,
    model_id: str,
    dims: Mapping[str, int],
    *,
    norm_tolerance: float = 1e-3,
) -> list[CheckOutcome]:
    """`embedding_checks` for every kind the model writes (global, s2), folded per check."""
    return merge_outcomes(
        {
            kind: embedding_checks(
                warehouse,
                drop_id,
                model_id,
                expected_dim=dim,
                kind=kind,
                norm_tolerance=norm_tolerance,
            )
            for kind, dim in dims.items()
        },
        key="kind",
    )


# ---------------------------------------------------------------------------------------------
# zero-shot (clip_zero_shot: one row per image, model and label set)


def zero_shot_checks(
    warehouse: Warehouse,
    drop_id: str,
    model_id: str,
    label_set: str,
    *,
    labels: Sequence[str],
    fingerprint: str,
    tolerance: float = 1e-4,
) -> list[CheckOutcome]:
    """Every image of the drop has a row of the current label-set version; its probabilities
    cover exactly the label set's labels, sum to 1, and the top label is their argmax."""
    params = {"drop": drop_id, "model": model_id, "set": label_set, "fp": fingerprint}
    with warehouse.reader() as conn:
        images = _scalar(conn, f"SELECT count(*) FROM ({DROP_IMAGES})", params)
        missing = _records(
            conn,
            f"""
            SELECT d.image_id, z.label_set_fingerprint AS stale_fingerprint
            FROM ({DROP_IMAGES}) d LEFT JOIN clip_zero_shot z ON z.image_id = d.image_id
                AND z.model_id = $model AND z.label_set = $set
            WHERE (z.image_id IS NULL OR z.label_set_fingerprint <> $fp)
              AND NOT EXISTS (  -- unreadable for this model: no embedding to label
                SELECT 1 FROM clip_failures c
                WHERE c.image_id = d.image_id AND c.model_id = $model)
            ORDER BY d.image_id
            """,
            params,
        )
        bad = _records(
            conn,
            f"""
            WITH rows AS (
                SELECT z.image_id, z.top_label, z.top_probability,
                       map_extract_value(z.probabilities, z.top_label) AS top_in_map,
                       map_keys(z.probabilities) AS keys, map_values(z.probabilities) AS probs
                FROM clip_zero_shot z JOIN ({DROP_IMAGES}) d USING (image_id)
                WHERE z.model_id = $model AND z.label_set = $set
            )
            SELECT image_id, top_label, round(list_sum(probs), 6) AS probability_sum,
                   CASE WHEN list_sort(keys) <> list_sort($labels) THEN 'labels differ from the set'
                        WHEN NOT list_bool_and(list_transform(probs, lambda p: isfinite(p) AND p >= 0))
                            THEN 'negative or non-finite probability'
                        WHEN abs(list_sum(probs) - 1) > $tol THEN 'probabilities do not sum to 1'
                        WHEN NOT list_contains(keys, top_label) THEN 'top label not in the set'
                        WHEN abs(top_in_map - list_max(probs)) > $tol
                            OR abs(top_probability - top_in_map) > $tol
                            THEN 'top label is not the most probable'
                   END AS problem
            FROM rows WHERE problem IS NOT NULL ORDER BY image_id
            """,
            {**params, "labels": list(labels), "tol": tolerance},
        )
        rows = _scalar(
            conn,
            f"SELECT count(*) FROM clip_zero_shot z JOIN ({DROP_IMAGES}) d USING (image_id)"
            " WHERE z.model_id = $model AND z.label_set = $set",
            params,
        )
    subject = f"{label_set}/{model_id}"
    return [
        CheckOutcome.from_offenders(
            ZERO_SHOT_ONE_PER_IMAGE,
            missing,
            summary=f"{subject}: {len(missing)} of {images} images lack a current row"
            if missing
            else f"{subject}: a current row for each of {images} images",
            counts={"images": int(images), "missing_or_stale": len(missing)},
        ),
        CheckOutcome.from_offenders(
            ZERO_SHOT_PROBABILITIES,
            bad,
            summary=f"{subject}: {len(bad)} of {rows} rows have malformed probabilities",
            threshold=tolerance,
            counts={"rows": int(rows), "malformed": len(bad)},
        ),
    ]


# ---------------------------------------------------------------------------------------------
# extraction (vlm_extractions and the typed task tables)


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
        rows = _execute(
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
        if not _table_exists(conn, "vlm_extractions"):
            return _missing_table(EXTRACTION_COVERAGE, "vlm_extractions")
        images = _scalar(conn, f"SELECT count(*) FROM ({DROP_IMAGES})", params)
        missing = _records(
            conn,
            f"""
            SELECT d.image_id, min(f.path) AS path FROM ({DROP_IMAGES}) d
            JOIN image_files f ON f.image_id = d.image_id AND f.drop_id = $drop
            WHERE NOT EXISTS (
                SELECT 1 FROM vlm_extractions x
                WHERE x.image_id = d.image_id AND x.task = $task AND {scope.where("x")}
            )
            GROUP BY d.image_id ORDER BY path
            """,
            params,
        )
    covered = images - len(missing)
    return CheckOutcome(
        check_name=EXTRACTION_COVERAGE,
        passed=not missing,
        severity="ERROR",
        summary=f"{scope.task}/{scope.model_id}: {covered} of {images} images have a result row",
        value=_rate(covered, images),
        threshold=1.0,
        counts={"images": int(images), "covered": int(covered), "missing": len(missing)},
        offending=missing[:SAMPLE_ROWS],
    )


def _failures_sample(
    warehouse: Warehouse, drop_id: str, scope: ExtractionScope, statuses: Sequence[str]
) -> list[dict]:
    with warehouse.reader() as conn:
        return _records(
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
    rate = _rate(counts.get("ok", 0), total)
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
    rate = _rate(counts.get("truncated", 0), total) or 0.0
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
            if not _table_exists(conn, table):
                return _missing_table(EXTRACTION_ENUMS, table)
            for column, values in sorted(columns.items()):
                checked += _scalar(
                    conn,
                    f"SELECT count(*) FROM {_ident(table)} t JOIN ({DROP_IMAGES}) d USING (image_id)"
                    f" WHERE {scope.where('t')}",
                    params,
                )
                offending += _records(
                    conn,
                    f"""
                    SELECT '{table}' AS "table", '{column}' AS "column", t.image_id,
                           CAST(t.{_ident(column)} AS VARCHAR) AS value
                    FROM {_ident(table)} t JOIN ({DROP_IMAGES}) d USING (image_id)
                    WHERE {scope.where("t")} AND t.{_ident(column)} IS NOT NULL
                      AND NOT list_contains($allowed, CAST(t.{_ident(column)} AS VARCHAR))
                    ORDER BY t.image_id
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
    """Child rows per extracted image (people per photo, ...) lie within the list's bounds."""
    params = scope.params(drop_id)
    parent = f"task_{scope.task}"
    offending: list[dict] = []
    per_table: dict[str, int] = {}
    with warehouse.reader() as conn:
        for table, (low, high) in sorted(constraints.entity_bounds.items()):
            for needed in (parent, table):
                if not _table_exists(conn, needed):
                    return _missing_table(EXTRACTION_ENTITY_COUNTS, needed)
            found = _records(
                conn,
                f"""
                SELECT '{table}' AS "table", p.image_id, count(c.image_id) AS entities
                FROM {_ident(parent)} p JOIN ({DROP_IMAGES}) d USING (image_id)
                LEFT JOIN {_ident(table)} c ON c.image_id = p.image_id
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
    return [
        extraction_coverage(warehouse, drop_id, scope),
        extraction_validity(
            warehouse, drop_id, scope, error_below=error_below, warn_below=warn_below
        ),
        extraction_truncation(warehouse, drop_id, scope, max_rate=max_truncation),
        extraction_enums(warehouse, drop_id, scope, constraints),
        extraction_entity_counts(warehouse, drop_id, scope, constraints),
    ]


# ---------------------------------------------------------------------------------------------
# drift and agreement


class LabelSource(BaseModel):
    """A label per image: a column of a table, filtered (zero-shot top labels, a task field)."""

    table: str
    column: str
    filters: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def zero_shot(cls, label_set: str, model_id: str) -> LabelSource:
        return cls(
            table="clip_zero_shot",
            column="top_label",
            filters={"label_set": label_set, "model_id": model_id},
        )

    @classmethod
    def task_field(
        cls, task: str, column: str, model_id: str, task_fingerprint: str | None = None
    ) -> LabelSource:
        filters = {"model_id": model_id}
        if task_fingerprint:
            filters["task_fingerprint"] = task_fingerprint
        return cls(table=f"task_{task}", column=column, filters=filters)

    def select(self, alias: str = "s") -> tuple[str, dict[str, str]]:
        """`SELECT image_id, label FROM ...` and its parameters (named `<alias>0`, `<alias>1`, ...)."""
        where = " AND ".join(
            f"{alias}.{_ident(name)} = ${alias}{i}" for i, name in enumerate(self.filters)
        )
        sql = (
            f"SELECT {alias}.image_id, CAST({alias}.{_ident(self.column)} AS VARCHAR) AS label"
            f" FROM {_ident(self.table)} {alias}" + (f" WHERE {where}" if where else "")
        )
        return sql, {f"{alias}{i}": value for i, value in enumerate(self.filters.values())}

    def describe(self) -> str:
        filters = ", ".join(f"{k}={v}" for k, v in self.filters.items())
        return f"{self.table}.{self.column} ({filters})"


def label_drift(
    warehouse: Warehouse,
    drop_id: str,
    source: LabelSource,
    *,
    categories: Sequence[str] | None = None,
    threshold: float = drift.DEFAULT_PSI_THRESHOLD,
) -> CheckOutcome:
    """This drop's label distribution against all drops ingested before it (PSI; chi-square too).

    Images the drop shares with earlier drops count on both sides; passes with a note when there
    is no earlier drop to compare with.
    """
    labels, params = source.select()
    params = {**params, "drop": drop_id}
    with warehouse.reader() as conn:
        if not _table_exists(conn, source.table):
            return _missing_table(LABEL_DRIFT, source.table, "WARN")
        rows = _execute(
            conn,
            f"""
            WITH me AS (SELECT first_ingested_at AS t FROM drops WHERE drop_id = $drop),
            earlier AS (
                SELECT DISTINCT f.image_id FROM image_files f JOIN drops d USING (drop_id)
                WHERE d.first_ingested_at < (SELECT t FROM me) AND f.drop_id <> $drop
            ),
            labels AS ({labels})
            SELECT 'current' AS side, label, count(*) FROM labels
                WHERE image_id IN ({DROP_IMAGES}) GROUP BY label
            UNION ALL
            SELECT 'reference', label, count(*) FROM labels
                WHERE image_id IN (SELECT image_id FROM earlier) GROUP BY label
            """,
            params,
        ).fetchall()
    current = {str(label): int(n) for side, label, n in rows if side == "current"}
    reference = {str(label): int(n) for side, label, n in rows if side == "reference"}
    base = {"current_images": sum(current.values()), "reference_images": sum(reference.values())}
    if not reference or not current:
        return CheckOutcome(
            check_name=LABEL_DRIFT,
            passed=True,
            severity="WARN",
            summary=f"{source.describe()}: nothing to compare "
            + ("(no earlier drops with labels)" if current else "(no labels in this drop)"),
            threshold=threshold,
            counts=base,
            details={"current": current, "reference": reference},
        )
    result = drift.compare(current, reference, categories, threshold=threshold)
    return CheckOutcome(
        check_name=LABEL_DRIFT,
        passed=not result.drifted,
        severity="WARN",
        summary=f"{source.describe()}: PSI {result.psi:.3f} vs earlier drops"
        f" (warn above {threshold}), chi-square {result.chi_square:.2f} on {result.degrees_of_freedom} dof",
        value=result.psi,
        threshold=threshold,
        counts=base,
        offending=[
            {"label": c, "current": result.current[c], "reference": result.reference[c]}
            for c in result.categories
        ][:SAMPLE_ROWS],
        details=result.model_dump(),
    )


def models_of_drop(warehouse: Warehouse, drop_id: str, source: LabelSource) -> list[str]:
    """Models that labelled this drop's images in `source`, most images first (then newest name)."""
    with warehouse.reader() as conn:
        if not _table_exists(conn, source.table):
            return []
        filters = " AND ".join(
            f"s.{_ident(name)} = $f{i}"
            for i, name in enumerate(source.filters)
            if name != "model_id"
        )
        rows = _execute(
            conn,
            f"""
            SELECT s.model_id, count(DISTINCT s.image_id) AS images
            FROM {_ident(source.table)} s JOIN ({DROP_IMAGES}) d USING (image_id)
            {"WHERE " + filters if filters else ""}
            GROUP BY s.model_id ORDER BY images DESC, s.model_id DESC
            """,
            {
                "drop": drop_id,
                **{
                    f"f{i}": value
                    for i, (name, value) in enumerate(source.filters.items())
                    if name != "model_id"
                },
            },
        ).fetchall()
    return [str(model_id) for model_id, _ in rows]


def agreement(
    warehouse: Warehouse,
    drop_id: str,
    field: LabelField,
    *,
    clip_model_id: str,
    vlm_model_id: str,
    task_fingerprint: str | None = None,
    min_rate: float = 0.5,
) -> CheckOutcome:
    """How often CLIP zero-shot's top label equals the VLM's value, with the confusion table."""
    if not (field.zero_shot_label_set and field.task and field.column):
        raise ValueError(f"field {field.name!r} is not predicted by both CLIP and a VLM task")
    clip, clip_params = LabelSource.zero_shot(field.zero_shot_label_set, clip_model_id).select("c")
    vlm_source = LabelSource.task_field(field.task, field.column, vlm_model_id, task_fingerprint)
    vlm, vlm_params = vlm_source.select("v")
    with warehouse.reader() as conn:
        for table in ("clip_zero_shot", vlm_source.table):
            if not _table_exists(conn, table):
                return _missing_table(AGREEMENT, table, "WARN")
        pairs = _execute(
            conn,
            f"""
            SELECT c.image_id, c.label, v.label FROM ({clip}) c JOIN ({vlm}) v USING (image_id)
            WHERE c.image_id IN ({DROP_IMAGES}) ORDER BY c.image_id
            """,
            {**clip_params, **vlm_params, "drop": drop_id},
        ).fetchall()
    clip_labels = [str(c) for _, c, _ in pairs]
    vlm_labels = [str(v) for _, _, v in pairs]
    agreed = sum(c == v for c, v in zip(clip_labels, vlm_labels, strict=True))
    rate = _rate(agreed, len(pairs))
    matrix = confusion_matrix(clip_labels, vlm_labels, labels=field.values)
    return CheckOutcome(
        check_name=AGREEMENT,
        passed=rate is None or rate >= min_rate,
        severity="WARN",
        summary=f"{field.name}: CLIP {clip_model_id} and VLM {vlm_model_id} agree on "
        f"{agreed} of {len(pairs)} images"
        + (f" ({rate:.1%}; warn below {min_rate:.0%})" if rate is not None else ""),
        value=rate,
        threshold=min_rate,
        counts={"images_compared": len(pairs), "agreed": agreed},
        offending=[
            {"image_id": image_id, "clip": c, "vlm": v} for image_id, c, v in pairs if c != v
        ][:SAMPLE_ROWS],
        details={
            "field": field.name,
            "confusion": matrix.model_dump(),
            "rows": "clip",
            "columns": "vlm",
        },
    )


def labelled_images_ingested(warehouse: Warehouse, image_ids: dict[str, str]) -> CheckOutcome:
    """Every labelled image (image_id -> its labelled file) is in `images`: an image never
    ingested has no prediction and silently shrinks what the evaluation is over."""
    with warehouse.reader() as conn:
        known = {
            row[0]
            for row in _execute(
                conn,
                "SELECT image_id FROM images WHERE list_contains($ids, image_id)",
                {"ids": sorted(image_ids)},
            ).fetchall()
        }
    missing = [
        {"image_id": iid, "path": path}
        for iid, path in sorted(image_ids.items())
        if iid not in known
    ]
    return CheckOutcome(
        check_name=LABELLED_INGESTED,
        passed=not missing,
        severity="WARN",
        summary=f"{len(image_ids) - len(missing)} of {len(image_ids)} labelled images are ingested",
        value=_rate(len(image_ids) - len(missing), len(image_ids)),
        threshold=1.0,
        counts={"labelled_images": len(image_ids), "not_ingested": len(missing)},
        offending=missing[:SAMPLE_ROWS],
    )


# ---------------------------------------------------------------------------------------------
# recording


def record_outcomes(
    warehouse: Warehouse,
    outcomes: Iterable[CheckOutcome],
    *,
    run_id: str,
    asset: str,
    partition: str | None,
    evaluated_at: dt.datetime | None = None,
) -> int:
    """Upsert outcomes into `quality_results` (one row per run, asset, check and partition)."""
    at = evaluated_at or dt.datetime.now(dt.UTC)
    rows = [
        (
            run_id,
            asset,
            outcome.check_name,
            partition or "",
            outcome.passed,
            outcome.severity,
            outcome.value,
            outcome.threshold,
            json.dumps(
                {
                    "summary": outcome.summary,
                    "counts": outcome.counts,
                    "offending": outcome.offending,
                    **outcome.details,
                },
                default=str,
            ),
            at,
        )
        for outcome in outcomes
    ]
    if not rows:
        return 0
    with warehouse.transaction() as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO quality_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
        )
    return len(rows)
