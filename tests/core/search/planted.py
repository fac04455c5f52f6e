"""Warehouses with planted vectors, images, drops and labels: the answers are known exactly."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from core.clip.store import write_embeddings
from core.tasks.registry import get_task
from core.vlm.store import ensure_task_tables
from core.warehouse import Warehouse

MODEL = "standin-tiny-clip/seed0"


def unit(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=-1, keepdims=True)


def plant(
    warehouse: Warehouse,
    drop_id: str,
    ids: list[str],
    vectors: np.ndarray,
    *,
    model_id: str = MODEL,
) -> None:
    """Images of `drop_id` (path `<drop>/<id>.jpg`) with these global embeddings."""
    now = datetime.now(UTC)
    with warehouse.transaction() as conn:
        for image_id in ids:
            path = f"{drop_id}/{image_id}.jpg"
            conn.execute(
                "INSERT INTO images VALUES (?, 1, 'JPEG', 'RGB', 8, 8, NULL, 1, NULL, [], ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [image_id, drop_id, path, now],
            )
            conn.execute(
                "INSERT INTO image_files (drop_id, path, image_id, is_duplicate, byte_size, mtime_ns,"
                " ingested_at) VALUES (?, ?, ?, false, 1, 0, ?)",
                [drop_id, path, image_id, now],
            )
        write_embeddings(conn, ids, unit(vectors), model_id=model_id, kind="global")


def label_scenery_people(
    warehouse: Warehouse, labels: dict[str, tuple[str, list[str]]], model_id: str = "vlm-a"
) -> None:
    """`scenery_people` rows: image_id -> (scenery, [age_group of each person])."""
    task = get_task("scenery_people")
    with warehouse.transaction() as conn:
        ensure_task_tables(conn, task)
        for image_id, (scenery, ages) in labels.items():
            parsed = {
                "scenery": scenery,
                "people": [{"age_group": age, "shirt_color": "red"} for age in ages],
            }
            for table, rows in task.rows(image_id, model_id, parsed).items():
                for row in rows:
                    marks = ", ".join("?" for _ in row)
                    conn.execute(f'INSERT INTO "{table}" VALUES ({marks})', list(row))
