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
from core.quality.fields import FIELDS
from core.tasks.registry import TASKS
from core.warehouse import Warehouse
from core.warehouse.queries import drop_image_paths, table_exists

PEOPLE_TASK = "scenery_people"  # lists the people it sees
PEOPLE_LIST = "people"
PERSON_TASK = "age_gender"  # describes the most prominent person


@dataclass
class Signals:
    path: str
    disagree: list[str] = field(default_factory=list)
    margin: float | None = None
    failed: list[str] = field(default_factory=list)
    conflict_of: str | None = None
    conflict_fields: list[str] = field(default_factory=list)
    people_listed: int | None = None
    person_described: bool = False


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


def vlm_values(
    warehouse: Warehouse, ids: Sequence[str], model_id: str
) -> dict[tuple[str, str], str]:
    """(image_id, field) -> the VLM's value, current task version, for fields of `FIELDS`."""
    values: dict[tuple[str, str], str] = {}
    for name, spec in FIELDS.items():
        task = TASKS.get(spec.task or "")
        if task is None or not spec.column or not table_exists(warehouse, f"task_{task.name}"):
            continue
        rows = query_drop(
            warehouse,
            f'SELECT t.image_id, CAST(t."{spec.column}" AS VARCHAR) FROM "task_{task.name}" t'
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
    db: Any, drop_id: str, fields: Sequence[str]
) -> tuple[dict[str, Signals], str | None, str | None, dict[tuple[str, str], str]]:
    """Every signal but near-duplicates, through one connection."""
    drop = drop_image_paths(db, drop_id, order_by="image_id")
    signals = {image_id: Signals(path=path) for image_id, path in drop}
    ids = list(signals)
    clip_model = most_used(db, "clip_zero_shot", ids)
    vlm_model = most_used(db, "vlm_extractions", ids)
    label_sets = [
        FIELDS[name].zero_shot_label_set for name in fields if FIELDS[name].zero_shot_label_set
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
    vlm = vlm_values(db, ids, vlm_model) if vlm_model else {}
    if vlm_model and ids:
        for task in TASKS.values():
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
                elif task.name == PERSON_TASK:
                    signals[image_id].person_described = True
        people_task = TASKS.get(PEOPLE_TASK)
        child = f"task_{PEOPLE_TASK}__{PEOPLE_LIST}"
        if people_task and table_exists(db, f"task_{PEOPLE_TASK}") and table_exists(db, child):
            rows = query_drop(
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
        for name in fields:
            clip_label = top.get((image_id, FIELDS[name].zero_shot_label_set or ""))
            value = vlm.get((image_id, name))
            if clip_label is not None and value is not None and clip_label != value:
                s.disagree.append(f"{name}: clip={clip_label} vlm={value}")
    return signals, clip_model, vlm_model, vlm


def near_duplicate_conflicts(
    warehouse: Warehouse,
    drop_id: str,
    signals: dict[str, Signals],
    vlm: dict[tuple[str, str], str],
    vlm_model: str | None,
    threshold: float,
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
