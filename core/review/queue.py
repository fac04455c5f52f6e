"""The review queue of a drop: its images ranked by how likely their labels are wrong.

Each image of the drop gets five signals, kept as columns of `review_queue` so a reviewer sees
why an image is there:

- `clip_vlm_disagree`: CLIP zero-shot's top label differs from the VLM's value on a field both
  predict (scenery, age group);
- `low_margin`: the zero-shot top-1 minus top-2 probability is below `margin_threshold` on one
  of those label sets (CLIP itself is unsure);
- `extraction_failed`: a task's latest extraction is `invalid`, `truncated` or `error` (the image
  has no trustworthy VLM label for it);
- `near_duplicate_conflict`: a near-duplicate image (CLIP cosine >= `near_duplicate_threshold`,
  in this drop or an earlier one) carries a different VLM value for some field;
- `people_count_mismatch`: `age_gender` describes a person while `scenery_people` lists nobody.

score = 3*extraction_failed + 2*near_duplicate_conflict + (fields in disagreement)
        + people_count_mismatch + (margin_threshold - margin) / margin_threshold when low.

Only images with a score above 0 are queued, highest score first (then lowest margin, then
image id). The queue holds at most `size(images in drop)` = max(top_n, ceil(top_fraction *
images)) rows: the top 50 or the top 5% of the drop, whichever is larger, by default.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa

from core.clip.near_duplicates import DEFAULT_THRESHOLD, near_duplicate_pairs
from core.quality.fields import AGREEMENT_FIELDS, FIELDS
from core.quality.outcome import CheckOutcome
from core.review.store import ensure_final_labels_view
from core.tasks.registry import TASKS
from core.warehouse import Warehouse
from core.warehouse.queries import drop_image_paths, table_exists

DEFAULT_TOP_N = 50
DEFAULT_TOP_FRACTION = 0.05
DEFAULT_MARGIN_THRESHOLD = 0.1

PEOPLE_TASK = "scenery_people"  # lists the people it sees
PEOPLE_LIST = "people"
PERSON_TASK = "age_gender"  # describes the most prominent person

WEIGHTS = {
    "extraction_failed": 3.0,
    "near_duplicate_conflict": 2.0,
    "clip_vlm_disagree": 1.0,  # per field in disagreement
    "people_count_mismatch": 1.0,
    "low_margin": 1.0,  # times how far below the threshold the margin is
}

COLUMNS = (
    "drop_id",
    "rank",
    "image_id",
    "path",
    "score",
    "reasons",
    "clip_vlm_disagree",
    "disagree_fields",
    "zero_shot_margin",
    "low_margin",
    "extraction_failed",
    "failed_tasks",
    "near_duplicate_conflict",
    "near_duplicate_of",
    "conflict_fields",
    "people_count_mismatch",
    "people_listed",
    "clip_model_id",
    "vlm_model_id",
    "created_at",
)


@dataclass(frozen=True)
class QueueOptions:
    top_n: int = DEFAULT_TOP_N
    top_fraction: float = DEFAULT_TOP_FRACTION
    margin_threshold: float = DEFAULT_MARGIN_THRESHOLD
    near_duplicate_threshold: float = DEFAULT_THRESHOLD
    fields: tuple[str, ...] = AGREEMENT_FIELDS  # compared between CLIP and the VLM

    def __post_init__(self) -> None:
        if self.top_n < 0 or not 0 <= self.top_fraction <= 1:
            raise ValueError("top_n must be >= 0 and top_fraction within [0, 1]")
        if not 0 < self.margin_threshold <= 1:
            raise ValueError("margin_threshold must be within (0, 1]")

    def size(self, images: int) -> int:
        """The most rows the queue of a drop with `images` images holds."""
        return min(images, max(self.top_n, math.ceil(self.top_fraction * images)))


@dataclass
class QueueReport:
    drop_id: str
    images: int
    flagged: int  # images with at least one reason
    size: int  # the cap
    queued: int
    clip_model_id: str | None
    vlm_model_id: str | None
    reason_counts: dict[str, int] = field(default_factory=dict)  # over flagged images
    frame: pl.DataFrame | None = None


@dataclass
class _Signals:
    path: str
    disagree: list[str] = field(default_factory=list)
    margin: float | None = None
    failed: list[str] = field(default_factory=list)
    conflict_of: str | None = None
    conflict_fields: list[str] = field(default_factory=list)
    people_listed: int | None = None
    person_described: bool = False


def _query(warehouse: Warehouse, sql: str, ids: Sequence[str], params: list[Any]) -> list[tuple]:
    """Run `sql` with the drop's image ids registered as the relation `drop_ids(image_id)`."""
    with warehouse.reader() as conn:
        conn.register("drop_ids", pa.table({"image_id": pa.array(list(ids), pa.string())}))
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.unregister("drop_ids")


def _most_used(warehouse: Warehouse, table: str, ids: Sequence[str]) -> str | None:
    if not table_exists(warehouse, table):
        return None
    rows = _query(
        warehouse,
        f"SELECT model_id FROM {table} JOIN drop_ids USING (image_id)"
        " GROUP BY model_id ORDER BY count(DISTINCT image_id) DESC, model_id DESC LIMIT 1",
        ids,
        [],
    )
    return str(rows[0][0]) if rows else None


def vlm_values(
    warehouse: Warehouse, ids: Sequence[str], model_id: str
) -> dict[tuple[str, str], str]:
    """(image_id, field) -> the VLM's value, current task version, for fields of `FIELDS`."""
    values: dict[tuple[str, str], str] = {}
    for name, spec in FIELDS.items():
        task = TASKS.get(spec.task or "")
        if task is None or not spec.column or not table_exists(warehouse, f"task_{task.name}"):
            continue
        rows = _query(
            warehouse,
            f'SELECT t.image_id, CAST(t."{spec.column}" AS VARCHAR) FROM "task_{task.name}" t'
            " JOIN drop_ids USING (image_id) WHERE t.model_id = ? AND t.task_fingerprint = ?",
            ids,
            [model_id, task.fingerprint],
        )
        values.update({(image_id, name): value for image_id, value in rows if value is not None})
    return values


class _Reader:
    """One open read connection for all of the queue's queries (each open costs ~0.1 s)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def rows(self, sql: str, params: Any = None) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def reader(self) -> Iterator[Any]:
        yield self.conn


def _read_signals(
    db: Any, drop_id: str, options: QueueOptions
) -> tuple[dict[str, _Signals], str | None, str | None, dict[tuple[str, str], str]]:
    """Every signal but near-duplicates, through one connection."""
    drop = drop_image_paths(db, drop_id, order_by="image_id")
    signals = {image_id: _Signals(path=path) for image_id, path in drop}
    ids = list(signals)
    clip_model = _most_used(db, "clip_zero_shot", ids)
    vlm_model = _most_used(db, "vlm_extractions", ids)
    label_sets = [
        FIELDS[name].zero_shot_label_set
        for name in options.fields
        if FIELDS[name].zero_shot_label_set
    ]
    top: dict[tuple[str, str], str] = {}  # (image_id, label set) -> CLIP's top label
    if clip_model and ids:
        rows = _query(
            db,
            "SELECT image_id, label_set, top_label,"
            " list_reverse_sort(map_values(probabilities)) AS s"
            " FROM clip_zero_shot JOIN drop_ids USING (image_id)"
            " WHERE model_id = ? AND list_contains(?, label_set)",
            ids,
            [clip_model, label_sets],
        )
        for image_id, label_set, top_label, ranked in rows:
            top[(image_id, label_set)] = str(top_label)
            margin = float(ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0))
            current = signals[image_id].margin
            signals[image_id].margin = margin if current is None else min(current, margin)
    vlm = vlm_values(db, ids, vlm_model) if vlm_model else {}
    if vlm_model and ids:
        for task in TASKS.values():
            rows = _query(
                db,
                "SELECT image_id, arg_max(status, created_at) FROM vlm_extractions"
                " JOIN drop_ids USING (image_id)"
                " WHERE task = ? AND model_id = ? AND task_fingerprint = ? GROUP BY image_id",
                ids,
                [task.name, vlm_model, task.fingerprint],
            )
            for image_id, status in rows:
                if status != "ok":
                    signals[image_id].failed.append(f"{task.name}: {status}")
                elif task.name == PERSON_TASK:
                    signals[image_id].person_described = True
        people_task = TASKS.get(PEOPLE_TASK)
        child = f"task_{PEOPLE_TASK}__{PEOPLE_LIST}"
        if people_task and table_exists(db, f"task_{PEOPLE_TASK}") and table_exists(db, child):
            rows = _query(
                db,
                f'SELECT p.image_id, count(c.idx) FROM "task_{PEOPLE_TASK}" p'
                " JOIN drop_ids USING (image_id)"
                f' LEFT JOIN "{child}" c ON c.image_id = p.image_id AND c.model_id = p.model_id'
                " AND c.task_fingerprint = p.task_fingerprint"
                " WHERE p.model_id = ? AND p.task_fingerprint = ? GROUP BY p.image_id",
                ids,
                [vlm_model, people_task.fingerprint],
            )
            for image_id, listed in rows:
                signals[image_id].people_listed = int(listed)
    for image_id, s in signals.items():
        for name in options.fields:
            clip_label = top.get((image_id, FIELDS[name].zero_shot_label_set or ""))
            value = vlm.get((image_id, name))
            if clip_label is not None and value is not None and clip_label != value:
                s.disagree.append(f"{name}: clip={clip_label} vlm={value}")
    return signals, clip_model, vlm_model, vlm


def compute_queue(
    warehouse: Warehouse, drop_id: str, options: QueueOptions = QueueOptions()
) -> QueueReport:
    """Score every image of the drop; return the ranked, capped queue (nothing is written)."""
    with warehouse.reader() as conn:
        signals, clip_model, vlm_model, vlm = _read_signals(_Reader(conn), drop_id, options)
    ids = list(signals)
    _near_duplicate_conflicts(warehouse, drop_id, signals, vlm, vlm_model, options)
    frame = _rank(drop_id, signals, options, clip_model, vlm_model)
    flagged = frame.height
    size = options.size(len(ids))
    queued = frame.head(size)
    reasons = (
        {
            name: int(frame[name].sum())
            for name in (
                "clip_vlm_disagree",
                "low_margin",
                "extraction_failed",
                "near_duplicate_conflict",
                "people_count_mismatch",
            )
        }
        if flagged
        else {}
    )
    return QueueReport(
        drop_id=drop_id,
        images=len(ids),
        flagged=flagged,
        size=size,
        queued=queued.height,
        clip_model_id=clip_model,
        vlm_model_id=vlm_model,
        reason_counts=reasons,
        frame=queued,
    )


def _near_duplicate_conflicts(
    warehouse: Warehouse,
    drop_id: str,
    signals: dict[str, _Signals],
    vlm: dict[tuple[str, str], str],
    vlm_model: str | None,
    options: QueueOptions,
) -> None:
    """Mark images whose near-duplicate (same CLIP model) has a different VLM value."""
    if not vlm_model or not signals or not table_exists(warehouse, "clip_embeddings"):
        return
    rows = _query(
        warehouse,
        "SELECT model_id, dim FROM clip_embeddings JOIN drop_ids USING (image_id)"
        " WHERE kind = 'global' GROUP BY ALL ORDER BY count(*) DESC, model_id DESC LIMIT 1",
        list(signals),
        [],
    )
    if not rows:
        return
    model_id, dim = rows[0]
    pairs = near_duplicate_pairs(
        warehouse,
        drop_id,
        model_id=str(model_id),
        dim=int(dim),
        threshold=options.near_duplicate_threshold,
    )
    if pairs.is_empty():
        return
    others = sorted(set(pairs["other_image_id"].to_list()) - set(signals))
    values = dict(vlm)
    if others:
        values.update(vlm_values(warehouse, others, vlm_model))
    for image_id, other, _cosine, _in_drop in pairs.iter_rows():
        for mine, theirs in ((image_id, other), (other, image_id)):
            s = signals.get(mine)
            if s is None or s.conflict_of is not None:
                continue
            differing = [
                f"{name}: {values[(mine, name)]} vs {values[(theirs, name)]}"
                for name in FIELDS
                if (mine, name) in values
                and (theirs, name) in values
                and values[(mine, name)] != values[(theirs, name)]
            ]
            if differing:
                s.conflict_of = theirs
                s.conflict_fields = differing


def _rank(
    drop_id: str,
    signals: dict[str, _Signals],
    options: QueueOptions,
    clip_model: str | None,
    vlm_model: str | None,
) -> pl.DataFrame:
    now = datetime.now(UTC)
    rows = []
    for image_id, s in signals.items():
        low = s.margin is not None and s.margin < options.margin_threshold
        mismatch = s.person_described and s.people_listed == 0
        flags = {
            "extraction_failed": bool(s.failed),
            "near_duplicate_conflict": s.conflict_of is not None,
            "clip_vlm_disagree": bool(s.disagree),
            "people_count_mismatch": mismatch,
            "low_margin": low,
        }
        score = (
            WEIGHTS["extraction_failed"] * flags["extraction_failed"]
            + WEIGHTS["near_duplicate_conflict"] * flags["near_duplicate_conflict"]
            + WEIGHTS["clip_vlm_disagree"] * len(s.disagree)
            + WEIGHTS["people_count_mismatch"] * mismatch
            + (
                WEIGHTS["low_margin"]
                * (options.margin_threshold - s.margin)
                / options.margin_threshold
                if low and s.margin is not None
                else 0.0
            )
        )
        if score <= 0:
            continue
        rows.append(
            {
                "drop_id": drop_id,
                "image_id": image_id,
                "path": s.path,
                "score": round(score, 6),
                "reasons": [name for name, on in flags.items() if on],
                "clip_vlm_disagree": flags["clip_vlm_disagree"],
                "disagree_fields": s.disagree,
                "zero_shot_margin": s.margin,
                "low_margin": low,
                "extraction_failed": flags["extraction_failed"],
                "failed_tasks": sorted(s.failed),
                "near_duplicate_conflict": flags["near_duplicate_conflict"],
                "near_duplicate_of": s.conflict_of,
                "conflict_fields": s.conflict_fields,
                "people_count_mismatch": mismatch,
                "people_listed": s.people_listed,
                "clip_model_id": clip_model,
                "vlm_model_id": vlm_model,
                "created_at": now,
            }
        )
    rows.sort(
        key=lambda r: (
            -r["score"],
            r["zero_shot_margin"] if r["zero_shot_margin"] is not None else 2.0,
            r["image_id"],
        )
    )
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    schema = {
        "drop_id": pl.String,
        "rank": pl.Int32,
        "image_id": pl.String,
        "path": pl.String,
        "score": pl.Float64,
        "reasons": pl.List(pl.String),
        "clip_vlm_disagree": pl.Boolean,
        "disagree_fields": pl.List(pl.String),
        "zero_shot_margin": pl.Float64,
        "low_margin": pl.Boolean,
        "extraction_failed": pl.Boolean,
        "failed_tasks": pl.List(pl.String),
        "near_duplicate_conflict": pl.Boolean,
        "near_duplicate_of": pl.String,
        "conflict_fields": pl.List(pl.String),
        "people_count_mismatch": pl.Boolean,
        "people_listed": pl.Int32,
        "clip_model_id": pl.String,
        "vlm_model_id": pl.String,
        "created_at": pl.Datetime("us", "UTC"),
    }
    return pl.DataFrame(rows, schema=schema).select(COLUMNS)


def _keep_unchanged_times(conn: Any, drop_id: str, frame: pl.DataFrame) -> pl.DataFrame:
    """A row identical to the stored one keeps its `created_at`: a rerun on unchanged labels
    changes no row."""
    stored = conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM review_queue WHERE drop_id = ?", [drop_id]
    ).fetchall()
    if not stored:
        return frame
    content = [c for c in COLUMNS if c != "created_at"]
    at = COLUMNS.index("created_at")
    kept = {repr([row[COLUMNS.index(c)] for c in content]): row[at] for row in stored}
    times = [
        kept.get(repr([row[c] for c in content]), row["created_at"])
        for row in frame.iter_rows(named=True)
    ]
    return frame.with_columns(pl.Series("created_at", times, dtype=frame["created_at"].dtype))


def write_queue(warehouse: Warehouse, report: QueueReport) -> int:
    """Replace the drop's queue in one transaction: a rerun never leaves old and new rows."""
    frame = report.frame if report.frame is not None else pl.DataFrame()
    with warehouse.transaction() as conn:
        if frame.height:
            frame = _keep_unchanged_times(conn, report.drop_id, frame)
        conn.execute("DELETE FROM review_queue WHERE drop_id = ?", [report.drop_id])
        if frame.height:
            conn.register("queue_rows", frame.to_arrow())
            try:
                names = ", ".join(COLUMNS)
                conn.execute(f"INSERT INTO review_queue ({names}) SELECT {names} FROM queue_rows")
            finally:
                conn.unregister("queue_rows")
        ensure_final_labels_view(conn)  # picks up task tables that appeared since
    return frame.height


# -- checks ------------------------------------------------------------------------------------

QUEUE_CONSISTENT = "review_queue_consistent"
QUEUE_FLAGGED_SHARE = "review_queue_flagged_share"
DEFAULT_MAX_FLAGGED_SHARE = 0.5


def queue_checks(
    warehouse: Warehouse,
    report: QueueReport,
    *,
    max_flagged_share: float = DEFAULT_MAX_FLAGGED_SHARE,
) -> list[CheckOutcome]:
    """Two checks on the written queue: its rows are sound (ERROR), and the share of the drop
    with a reason is not so high that the labels of the whole drop are suspect (WARN)."""
    problems = warehouse.rows(
        """
        WITH q AS (SELECT * FROM review_queue WHERE drop_id = $drop)
        SELECT image_id, 'not an image of the drop' FROM q
        WHERE image_id NOT IN (SELECT image_id FROM image_files WHERE drop_id = $drop)
        UNION ALL SELECT image_id, 'no reason' FROM q WHERE len(reasons) = 0 OR score <= 0
        UNION ALL SELECT image_id, 'rank ' || rank || ' out of order' FROM (
            SELECT image_id, rank, row_number() OVER (ORDER BY score DESC, rank) AS expected FROM q
        ) WHERE rank <> expected
        UNION ALL SELECT NULL, count(*) || ' rows over the cap of ' || $cap FROM q
        HAVING count(*) > $cap
        """,
        {"drop": report.drop_id, "cap": report.size},
    )
    consistent = CheckOutcome(
        check_name=QUEUE_CONSISTENT,
        passed=not problems,
        severity="ERROR",
        summary=f"{report.queued} queued of {report.flagged} flagged images (cap {report.size})"
        if not problems
        else f"{len(problems)} problems in the review queue rows",
        value=float(len(problems)),
        threshold=0.0,
        counts={"queued": report.queued, "flagged": report.flagged, "cap": report.size},
        offending=[{"image_id": i, "problem": p} for i, p in problems[:10]],
    )
    share = report.flagged / report.images if report.images else None
    flagged = CheckOutcome(
        check_name=QUEUE_FLAGGED_SHARE,
        passed=share is None or share <= max_flagged_share,
        severity="WARN",
        summary=f"{report.flagged} of {report.images} images have a reason to review"
        + (f" ({share:.0%}; warn above {max_flagged_share:.0%})" if share is not None else ""),
        value=share,
        threshold=max_flagged_share,
        counts={"images": report.images, "flagged": report.flagged, **report.reason_counts},
    )
    return [consistent, flagged]
