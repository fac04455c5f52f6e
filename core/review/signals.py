"""The signals behind the review queue, read from the warehouse (see `core.review.queue`).

Everything but near-duplicates is read through one connection (`OneConnection`): each open of
the DuckDB file costs about 0.1 s, and a drop needs a dozen queries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from core.clip.near_duplicates import near_duplicate_pairs
from core.labels.derive import build_tasks
from core.labels.loader import current_spec
from core.labels.spec import LabelsSpec
from core.quality.fields import LabelField, spec_fields
from core.tasks.base import Task
from core.warehouse import Warehouse
from core.warehouse.queries import drop_image_paths, table_exists

# Kinds compared between near-duplicates: a label from a fixed set (numbers and text vary).
CONFLICT_KINDS = ("choice", "multi_choice", "yes_no")


@dataclass(frozen=True)
class SpecView:
    """What the queue reads of a labeling spec: its tasks and labelled fields."""

    spec: LabelsSpec
    tasks: dict[str, Task]
    fields: dict[str, LabelField]

    @classmethod
    def of(cls, spec: LabelsSpec | None = None) -> SpecView:
        spec = current_spec() if spec is None else spec
        return cls(spec, build_tasks(spec), {f.name: f for f in spec_fields(spec)})


@dataclass
class Signals:
    path: str
    disagree: list[str] = field(default_factory=list)
    margin: float | None = None
    failed: list[str] = field(default_factory=list)
    conflict_of: str | None = None
    conflict_fields: list[str] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)  # tasks whose latest result is ok
    violations: list[str] = field(default_factory=list)  # broken consistency rules
    # labelled field -> the confidence of the VLM's value (current task version), where known
    confidence: dict[str, float] = field(default_factory=dict)

    @property
    def min_confidence(self) -> float | None:
        return min(self.confidence.values()) if self.confidence else None


def query_drop(
    warehouse: Warehouse, sql: str, ids: Sequence[str], params: list[Any]
) -> list[tuple]:
    """Run `sql` with the drop's image ids registered as the relation `drop_ids(image_id)`."""
    with warehouse.reader() as conn:
        conn.register("drop_ids", pa.table({"image_id": pa.array(list(ids), pa.string())}))
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.unregister("drop_ids")


def most_used(warehouse: Warehouse, table: str, ids: Sequence[str]) -> str | None:
    if not table_exists(warehouse, table):
        return None
    rows = query_drop(
        warehouse,
        f"SELECT model_id FROM {table} JOIN drop_ids USING (image_id)"
        " GROUP BY model_id ORDER BY count(DISTINCT image_id) DESC, model_id DESC LIMIT 1",
        ids,
        [],
    )
    return str(rows[0][0]) if rows else None


def value_sql(column: str, kind: str) -> str:
    """A field's value as text: a multi-label set sorted and joined with `|` (order-free)."""
    if kind == "multi_choice":
        return f"array_to_string(list_sort(t.\"{column}\"), '|')"
    return f'CAST(t."{column}" AS VARCHAR)'


def vlm_values(
    warehouse: Warehouse, ids: Sequence[str], model_id: str, view: SpecView
) -> dict[tuple[str, str], str]:
    """(image_id, field) -> the VLM's value, current task version, for the spec's fields
    holding a label from a fixed set."""
    values: dict[tuple[str, str], str] = {}
    for name, spec in view.fields.items():
        task = view.tasks.get(spec.task or "")
        if spec.kind not in CONFLICT_KINDS:
            continue
        if task is None or not spec.column or not table_exists(warehouse, f"task_{task.name}"):
            continue
        rows = query_drop(
            warehouse,
            f'SELECT t.image_id, {value_sql(spec.column, spec.kind)} FROM "task_{task.name}" t'
            " JOIN drop_ids USING (image_id) WHERE t.model_id = ? AND t.task_fingerprint = ?",
            ids,
            [model_id, task.fingerprint],
        )
        values.update({(image_id, name): value for image_id, value in rows if value is not None})
    return values


class OneConnection:
    """One open read connection for all of the queue's queries (each open costs ~0.1 s)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def rows(self, sql: str, params: Any = None) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def reader(self) -> Iterator[Any]:
        yield self.conn


def read_signals(
    db: Any, drop_id: str, fields: Sequence[str] | None, view: SpecView
) -> tuple[dict[str, Signals], str | None, str | None, dict[tuple[str, str], str]]:
    """Every signal but near-duplicates, through one connection; `fields` (default: every
    field with a label set and agreement on) are compared between CLIP and the VLM."""
    if fields is None:
        fields = [name for name, f in view.fields.items() if f.agreement]
    fields = [name for name in fields if name in view.fields]
    drop = drop_image_paths(db, drop_id, order_by="image_id")
    signals = {image_id: Signals(path=path) for image_id, path in drop}
    ids = list(signals)
    clip_model = most_used(db, "clip_zero_shot", ids)
    vlm_model = most_used(db, "vlm_extractions", ids)
    label_sets = [
        view.fields[name].zero_shot_label_set
        for name in fields
        if view.fields[name].zero_shot_label_set
    ]
    top: dict[tuple[str, str], str] = {}  # (image_id, label set) -> CLIP's top label
    if clip_model and ids:
        rows = query_drop(
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
    vlm = vlm_values(db, ids, vlm_model, view) if vlm_model else {}
    if vlm_model and ids:
        for task in view.tasks.values():
            rows = query_drop(
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
                else:
                    signals[image_id].answered.add(task.name)
        consistency_violations(db, ids, vlm_model, view, signals)
        field_confidence(db, ids, vlm_model, view, signals)
    for image_id, s in signals.items():
        for name in fields:
            clip_label = top.get((image_id, view.fields[name].zero_shot_label_set or ""))
            value = vlm.get((image_id, name))
            if clip_label is None or value is None:
                continue
            if view.fields[name].kind == "multi_choice":
                differs = clip_label not in value.split("|")
            else:
                differs = clip_label != value
            if differs:
                s.disagree.append(f"{name}: clip={clip_label} vlm={value}")
    return signals, clip_model, vlm_model, vlm


def consistency_violations(
    db: Any, ids: Sequence[str], vlm_model: str, view: SpecView, signals: dict[str, Signals]
) -> None:
    """Each consistency rule of the spec: the `when_answered` task answered while the entity
    list `expect_entities` is empty (current versions of both tasks, this VLM)."""
    for rule in view.spec.consistency:
        listing_name, entities = rule.expect_entities.split(".", 1)
        listing = view.tasks.get(listing_name)
        if listing is None or rule.when_answered not in view.tasks:
            continue
        parent = listing.tables.table
        child = f"{parent}__{entities}"
        if not (table_exists(db, parent) and table_exists(db, child)):
            continue
        rows = query_drop(
            db,
            f'SELECT p.image_id, count(c.idx) FROM "{parent}" p JOIN drop_ids USING (image_id)'
            f' LEFT JOIN "{child}" c ON c.image_id = p.image_id AND c.model_id = p.model_id'
            " AND c.task_fingerprint = p.task_fingerprint"
            " WHERE p.model_id = ? AND p.task_fingerprint = ? GROUP BY p.image_id",
            ids,
            [vlm_model, listing.fingerprint],
        )
        for image_id, listed in rows:
            s = signals[image_id]
            if int(listed) == 0 and rule.when_answered in s.answered:
                s.violations.append(
                    f"{rule.name}: {rule.when_answered} answered, {rule.expect_entities} empty"
                )


def field_confidence(
    db: Any, ids: Sequence[str], vlm_model: str, view: SpecView, signals: dict[str, Signals]
) -> None:
    """Each labelled field's confidence (`vlm_field_confidence`, current task versions, this
    VLM). Only labelled fields: free text and entity lists are left out, as their probability
    shrinks with their length and one threshold would flag every long answer."""
    if not table_exists(db, "vlm_field_confidence"):
        return
    for task in view.tasks.values():
        columns = {
            f.column: name for name, f in view.fields.items() if f.task == task.name and f.column
        }
        if not columns:
            continue
        rows = query_drop(
            db,
            "SELECT image_id, field, confidence FROM vlm_field_confidence"
            " JOIN drop_ids USING (image_id) WHERE task = ? AND task_fingerprint = ?"
            " AND model_id = ? AND list_contains(?, field) AND confidence IS NOT NULL",
            ids,
            [task.name, task.fingerprint, vlm_model, list(columns)],
        )
        for image_id, column, confidence in rows:
            signals[image_id].confidence[columns[column]] = float(confidence)


def near_duplicate_conflicts(
    warehouse: Warehouse,
    drop_id: str,
    signals: dict[str, Signals],
    vlm: dict[tuple[str, str], str],
    vlm_model: str | None,
    threshold: float,
    view: SpecView,
) -> None:
    """Mark images whose near-duplicate (same CLIP model) has a different VLM value."""
    if not vlm_model or not signals or not table_exists(warehouse, "clip_embeddings"):
        return
    rows = query_drop(
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
        threshold=threshold,
    )
    if pairs.is_empty():
        return
    others = sorted(set(pairs["other_image_id"].to_list()) - set(signals))
    values = dict(vlm)
    if others:
        values.update(vlm_values(warehouse, others, vlm_model, view))
    for image_id, other, _cosine, _in_drop in pairs.iter_rows():
        for mine, theirs in ((image_id, other), (other, image_id)):
            s = signals.get(mine)
            if s is None or s.conflict_of is not None:
                continue
            differing = [
                f"{name}: {values[(mine, name)]} vs {values[(theirs, name)]}"
                for name in view.fields
                if (mine, name) in values
                and (theirs, name) in values
                and values[(mine, name)] != values[(theirs, name)]
            ]
            if differing:
                s.conflict_of = theirs
                s.conflict_fields = differing
