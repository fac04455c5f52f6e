"""What a check found (`CheckOutcome`), folding outcomes of several subjects into one, recording
them in `quality_results`, and the small SQL helpers the stage check modules share.

The checks themselves live beside each stage's store: `core/ingest/checks.py`,
`core/clip/checks.py`, `core/vlm/checks.py`, and `core/quality/cross_stage.py` for checks that
compare stages. Each is scoped to one drop (partition) and only reads.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import duckdb
import pyarrow as pa
from pydantic import BaseModel, Field

from core.warehouse import Warehouse
from core.warehouse.queries import DROP_IMAGE_PATHS, DROP_IMAGES, first_paths, table_exists

# quality_results' columns, in table order, for the MERGE source.
_QUALITY_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("asset", pa.string()),
        ("check_name", pa.string()),
        ("partition", pa.string()),
        ("passed", pa.bool_()),
        ("severity", pa.string()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("details", pa.string()),
        ("evaluated_at", pa.timestamp("us", tz="UTC")),
    ]
)

Severity = Literal["ERROR", "WARN"]
SAMPLE_ROWS = 10

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
    better: Literal["lower", "higher"] = "lower"  # which way `value` improves (folding: worst)
    counts: dict[str, int] = Field(default_factory=dict)
    offending: list[dict[str, Any]] = Field(default_factory=list)  # at most SAMPLE_ROWS
    details: dict[str, Any] = Field(default_factory=dict)
    # Why the check did not judge (too little data): it passes, and its summary says so.
    skipped: str | None = None

    @classmethod
    def from_offenders(
        cls,
        check_name: str,
        offenders: Sequence[dict[str, Any]],
        *,
        summary: str,
        counts: dict[str, int],
        severity: Severity = "ERROR",
        settings: dict[str, Any] | None = None,
    ) -> CheckOutcome:
        """The common shape: the check passes when no row offends; the value is how many do.
        `settings` (a tolerance, an expected dimension) are what decides which rows offend."""
        return cls(
            check_name=check_name,
            passed=not offenders,
            severity=severity,
            summary=summary,
            value=float(len(offenders)),
            threshold=0.0,
            counts=counts,
            offending=list(offenders[:SAMPLE_ROWS]),
            details={"settings": settings} if settings else {},
        )


def too_few_text(have: int, need: int, unit: str = "images") -> str:
    """The reason a check with a minimum did not judge, worded the same by every such check."""
    return f"too few {unit} ({have} of {need} needed)"


def too_few(
    check_name: str,
    *,
    have: int,
    need: int,
    unit: str = "images",
    subject: str | None = None,
    severity: Severity = "WARN",
    threshold: float | None = None,
    better: Literal["lower", "higher"] = "lower",
    counts: dict[str, int] | None = None,
    details: dict[str, Any] | None = None,
) -> CheckOutcome:
    """The outcome of a check with a minimum that the drop does not reach: it passes (nothing
    was found wrong), has no value (nothing was measured) and says "skipped: too few ...", so
    neither a "Passed" over 0 images nor a warning on one image reads as a verdict."""
    reason = too_few_text(have, need, unit)
    return CheckOutcome(
        check_name=check_name,
        passed=True,
        severity=severity,
        summary=f"skipped: {reason}" + (f" for {subject}" if subject else ""),
        threshold=threshold,
        better=better,
        counts=counts or {},
        details={"settings": {"min_images": need}, **(details or {})},
        skipped=reason,
    )


def _merged_summary(items: Sequence[tuple[str, CheckOutcome]]) -> str:
    """Every subject's summary; when all were skipped for the same reason, that reason once."""
    reasons = {o.skipped for _, o in items}
    if len(reasons) == 1 and None not in reasons:
        return f"skipped: {reasons.pop()} for {', '.join(s for s, _ in items)}"
    return "; ".join(o.summary for _, o in items)


def offending_paths(
    warehouse: Warehouse, drop_id: str | None, offending: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """image_id -> a path a person recognises, for every image id in offending rows: the
    image's path in this drop, else where it was first seen (an image of an earlier drop)."""
    ids = sorted(
        {
            str(value)
            for row in offending
            for key, value in row.items()
            if key.endswith("image_id") and isinstance(value, str)
        }
    )
    if not ids or not warehouse.exists():
        return {}
    with warehouse.reader() as conn:
        found: dict[str, str] = {}
        if drop_id is not None:
            found = {
                str(i): str(p)
                for i, p in execute(
                    conn,
                    f"SELECT image_id, path FROM ({DROP_IMAGE_PATHS})"
                    " WHERE image_id IN (SELECT unnest($ids::VARCHAR[]))",
                    {"drop": drop_id, "ids": ids},
                ).fetchall()
            }
        missing = [i for i in ids if i not in found]
        if missing and table_exists(conn, "images"):
            found |= first_paths(conn, missing)
    return found


def readable_offending(
    offending: Sequence[Mapping[str, Any]], paths: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Offending rows for a person: each `image_id` (or `other_image_id` ...) column becomes the
    image's `path` (`other_path` ...) unless the row already has one; an id whose path is
    unknown is cut to 12 characters, enough to find it in SQL with LIKE."""
    readable = []
    for row in offending:
        out: dict[str, Any] = {}
        for key, value in row.items():
            if not key.endswith("image_id") or not isinstance(value, str):
                out[key] = value
                continue
            path_key = key.removesuffix("image_id") + "path"
            if path_key in row:  # the check named the path itself
                continue
            if value in paths:
                out[path_key] = paths[value]
            else:
                out[key] = value[:12]
        readable.append(out)
    return readable


def ident(name: str) -> str:
    """Table and column names come from code, never users; refuse anything but plain names."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def execute(
    conn: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any]
) -> duckdb.DuckDBPyConnection:
    """Execute with the named parameters `sql` uses (DuckDB refuses unused ones)."""
    used = set(_PARAMETER.findall(sql))
    return conn.execute(sql, {k: v for k, v in params.items() if k in used})


def records(conn: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any]) -> list[dict]:
    cursor = execute(conn, sql, params)
    names = [column[0] for column in cursor.description]
    return [
        {name: jsonable(value) for name, value in zip(names, row, strict=True)}
        for row in cursor.fetchall()
    ]


def scalar(conn: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any]) -> Any:
    row = execute(conn, sql, params).fetchone()
    return row[0] if row else None


# What every check of a drop's images says when every file of the drop was rejected.
NO_IMAGES = "nothing to check: the drop has no images (every file was rejected)"


def drop_image_count(conn: duckdb.DuckDBPyConnection, drop_id: str) -> int:
    """How many distinct images the drop has (0 when every file was rejected)."""
    return int(scalar(conn, f"SELECT count(*) FROM ({DROP_IMAGES})", {"drop": drop_id}) or 0)


def no_images(
    check_name: str,
    severity: Severity = "ERROR",
    *,
    subject: str | None = None,
    counts: dict[str, int] | None = None,
) -> CheckOutcome:
    """A check of a drop without images: it passes, and says there was nothing to judge, so no
    model table need exist yet (a fresh warehouse whose first drop is all rejects)."""
    return CheckOutcome(
        check_name=check_name,
        passed=True,
        severity=severity,
        summary=f"{subject}: {NO_IMAGES}" if subject else NO_IMAGES,
        counts={"images": 0, **(counts or {})},
    )


def missing_table(
    conn: duckdb.DuckDBPyConnection,
    drop_id: str | None,
    check_name: str,
    table: str,
    severity: Severity = "ERROR",
    *,
    subject: str | None = None,
) -> CheckOutcome:
    """The outcome of a check whose table does not exist: a failure when the drop has images
    (its stage never wrote them), `no_images` when it has none (the stage had nothing to write)."""
    if drop_id is not None and not drop_image_count(conn, drop_id):
        return no_images(check_name, severity, subject=subject)
    return CheckOutcome(
        check_name=check_name,
        passed=False,
        severity=severity,
        summary=f"table {table} does not exist: has its asset ever run?",
    )


def share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _worst(items: Sequence[tuple[str, CheckOutcome]]) -> tuple[str, CheckOutcome]:
    """The subject that decides the folded outcome: a failed ERROR before a failed WARN before a
    pass, and among those the worst value (lowest agreement, most offending rows)."""
    failed = [(s, o) for s, o in items if not o.passed]
    errors = [(s, o) for s, o in failed if o.severity == "ERROR"]
    pool = errors or failed or list(items)
    valued = [(s, o) for s, o in pool if o.value is not None]
    if not valued:
        return pool[0]
    return min(valued, key=lambda so: so[1].value if so[1].better == "higher" else -so[1].value)


def merge_outcomes(parts: Mapping[str, Sequence[CheckOutcome]], key: str) -> list[CheckOutcome]:
    """One outcome per check name from outcomes of several subjects (kinds, tasks, label sets).

    A Dagster asset declares each check once, so per-subject outcomes are folded: passed when
    every subject passed, the worst failing severity; value, threshold and counts are those of
    the worst subject (named in `details.worst`), so a plotted value means one thing; every
    subject's value and counts are kept under `details.subjects`, offending rows tagged with
    their subject (`key`), and each subject's details under `details.parts`.
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
        worst_subject, worst = _worst(items)
        merged.append(
            CheckOutcome(
                check_name=name,
                passed=not failed,
                severity=severity,
                summary=_merged_summary(items),
                value=worst.value,
                threshold=worst.threshold,
                better=worst.better,
                counts=dict(worst.counts),
                skipped=(
                    "; ".join(dict.fromkeys(str(o.skipped) for _, o in items))
                    if all(o.skipped for _, o in items)
                    else None
                ),
                offending=[{key: subject, **row} for subject, o in items for row in o.offending][
                    :SAMPLE_ROWS
                ],
                details={
                    **(
                        {"settings": worst.details["settings"]}
                        if "settings" in worst.details
                        else {}
                    ),
                    "parts": {subject: o.details for subject, o in items if o.details},
                    "subject_key": key,
                    "worst": worst_subject,
                    "subjects": {
                        subject: {
                            "passed": o.passed,
                            "skipped": o.skipped,
                            "value": o.value,
                            "counts": o.counts,
                        }
                        for subject, o in items
                    },
                },
            )
        )
    return merged


def subject_counts(outcome: CheckOutcome) -> dict[str, dict[str, int]]:
    """Counts per subject of a folded outcome (one entry, `""`, for an outcome of one subject)."""
    subjects = outcome.details.get("subjects")
    if not subjects:
        return {"": dict(outcome.counts)}
    return {subject: dict(part["counts"]) for subject, part in subjects.items()}


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
                    **({"skipped": outcome.skipped} if outcome.skipped else {}),
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
    # One row per key, the last one given winning (as INSERT OR REPLACE did): MERGE refuses two
    # source rows for one target row.
    rows = list({row[:4]: row for row in rows}.values())
    batch = pa.Table.from_pylist(
        [dict(zip(_QUALITY_SCHEMA.names, row, strict=True)) for row in rows], schema=_QUALITY_SCHEMA
    )

    def write(conn: duckdb.DuckDBPyConnection) -> None:
        conn.register("quality_batch", batch)
        try:
            conn.execute(
                "MERGE INTO quality_results USING quality_batch AS s"
                " ON quality_results.run_id = s.run_id AND quality_results.asset = s.asset"
                " AND quality_results.check_name = s.check_name"
                " AND quality_results.partition = s.partition"
                " WHEN MATCHED THEN UPDATE SET passed = s.passed, severity = s.severity,"
                " value = s.value, threshold = s.threshold, details = s.details,"
                " evaluated_at = s.evaluated_at"
                " WHEN NOT MATCHED THEN INSERT BY NAME"
            )
        finally:
            conn.unregister("quality_batch")

    warehouse.write(write)
    return len(rows)
