"""The review queue of a drop: its images ranked by how likely their labels are wrong.

Each image of the drop gets six signals, kept as columns of `review_queue` so a reviewer sees
why an image is there:

- `clip_vlm_disagree`: CLIP zero-shot's top label differs from the VLM's value on a field both
  predict (a choice field of the labeling spec with a label set and agreement on; on a
  multi-choice field: CLIP's top label is not among the VLM's values);
- `low_margin`: the zero-shot top-1 minus top-2 probability is below `margin_threshold` on one
  of those label sets (CLIP itself is unsure);
- `extraction_failed`: a task's latest extraction is `invalid`, `truncated` or `error` (the image
  has no trustworthy VLM label for it);
- `near_duplicate_conflict`: a near-duplicate image (CLIP cosine >= `near_duplicate_threshold`,
  in this drop or an earlier one) carries a different VLM value for some choice, multi-choice
  or yes/no field;
- `consistency_violation`: a `consistency:` rule of the spec is broken (its `when_answered`
  task answered while its `expect_entities` list is empty); `consistency_violations` names the
  rules. A spec that declares no rule never raises it.
- `low_confidence`: the VLM's value of a labelled field had a probability (its tokens'
  logprobs, `vlm_field_confidence`) below the spec's `review.low_confidence_below`;
  `min_confidence` is the image's lowest, `low_confidence_fields` names the fields, lowest
  first. Without logprobs (a server that returns none) it is never raised.

score = 3*extraction_failed + 2*near_duplicate_conflict + (fields in disagreement)
        + (rules broken) + (margin_threshold - margin) / margin_threshold when low
        + (threshold - min_confidence) / threshold when low.

Only images with a score above 0 are queued, highest score first (then lowest confidence, then
lowest margin, then image id). The queue holds at most `size(images in drop)` = max(top_n, ceil(top_fraction *
images)) rows: the top 50 or the top 5% of the drop, whichever is larger, by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import polars as pl

from core.clip.near_duplicates import DEFAULT_THRESHOLD
from core.labels.spec import LabelsSpec
from core.quality.outcome import CheckOutcome
from core.review.signals import (
    OneConnection,
    Signals,
    SpecView,
    near_duplicate_conflicts,
    read_signals,
)
from core.review.store import ensure_final_labels_view
from core.warehouse import Warehouse

DEFAULT_TOP_N = 50
DEFAULT_TOP_FRACTION = 0.05
DEFAULT_MARGIN_THRESHOLD = 0.1

WEIGHTS = {
    "extraction_failed": 3.0,
    "near_duplicate_conflict": 2.0,
    "clip_vlm_disagree": 1.0,  # per field in disagreement
    "consistency_violation": 1.0,  # per rule broken
    "low_margin": 1.0,  # times how far below the threshold the margin is
    "low_confidence": 1.0,  # times how far below the spec's threshold the lowest confidence is
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
    "consistency_violation",
    "consistency_violations",
    "low_confidence",
    "min_confidence",
    "low_confidence_fields",
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
    # compared between CLIP and the VLM; None: every spec field with a label set and agreement on
    fields: tuple[str, ...] | None = None

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


def compute_queue(
    warehouse: Warehouse,
    drop_id: str,
    options: QueueOptions = QueueOptions(),
    spec: LabelsSpec | None = None,
) -> QueueReport:
    """Score every image of the drop under the labeling spec (default: the current one);
    return the ranked, capped queue (nothing is written)."""
    view = SpecView.of(spec)
    with warehouse.reader() as conn:
        signals, clip_model, vlm_model, vlm = read_signals(
            OneConnection(conn), drop_id, options.fields, view
        )
    ids = list(signals)
    near_duplicate_conflicts(
        warehouse, drop_id, signals, vlm, vlm_model, options.near_duplicate_threshold, view
    )
    threshold = view.spec.review.low_confidence_below
    frame = _rank(drop_id, signals, options, clip_model, vlm_model, threshold)
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
                "consistency_violation",
                "low_confidence",
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


def _rank(
    drop_id: str,
    signals: dict[str, Signals],
    options: QueueOptions,
    clip_model: str | None,
    vlm_model: str | None,
    confidence_threshold: float,
) -> pl.DataFrame:
    now = datetime.now(UTC)
    rows = []
    for image_id, s in signals.items():
        low = s.margin is not None and s.margin < options.margin_threshold
        least = s.min_confidence
        unsure = sorted(
            (value, name) for name, value in s.confidence.items() if value < confidence_threshold
        )
        flags = {
            "extraction_failed": bool(s.failed),
            "near_duplicate_conflict": s.conflict_of is not None,
            "clip_vlm_disagree": bool(s.disagree),
            "consistency_violation": bool(s.violations),
            "low_margin": low,
            "low_confidence": bool(unsure),
        }
        score = (
            WEIGHTS["extraction_failed"] * flags["extraction_failed"]
            + WEIGHTS["near_duplicate_conflict"] * flags["near_duplicate_conflict"]
            + WEIGHTS["clip_vlm_disagree"] * len(s.disagree)
            + WEIGHTS["consistency_violation"] * len(s.violations)
            + (
                WEIGHTS["low_margin"]
                * (options.margin_threshold - s.margin)
                / options.margin_threshold
                if low and s.margin is not None
                else 0.0
            )
            + (
                WEIGHTS["low_confidence"] * (confidence_threshold - least) / confidence_threshold
                if unsure and least is not None
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
                "consistency_violation": bool(s.violations),
                "consistency_violations": s.violations,
                "low_confidence": flags["low_confidence"],
                "min_confidence": least,
                "low_confidence_fields": [f"{name}: {value:.3g}" for value, name in unsure],
                "clip_model_id": clip_model,
                "vlm_model_id": vlm_model,
                "created_at": now,
            }
        )
    rows.sort(
        key=lambda r: (
            -r["score"],
            r["min_confidence"] if r["min_confidence"] is not None else 2.0,
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
        "consistency_violation": pl.Boolean,
        "consistency_violations": pl.List(pl.String),
        "low_confidence": pl.Boolean,
        "min_confidence": pl.Float64,
        "low_confidence_fields": pl.List(pl.String),
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

    def write(conn: duckdb.DuckDBPyConnection) -> None:
        rows = _keep_unchanged_times(conn, report.drop_id, frame) if frame.height else frame
        conn.execute("DELETE FROM review_queue WHERE drop_id = ?", [report.drop_id])
        if rows.height:
            conn.register("queue_rows", rows.to_arrow())
            try:
                names = ", ".join(COLUMNS)
                conn.execute(f"INSERT INTO review_queue ({names}) SELECT {names} FROM queue_rows")
            finally:
                conn.unregister("queue_rows")
        ensure_final_labels_view(conn)  # picks up task tables that appeared since

    warehouse.write(write)
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
