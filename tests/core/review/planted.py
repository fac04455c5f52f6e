"""A drop of the seven sample photographs with planted model outputs, one reason per image.

Written through the pipeline's own writers (zero-shot, embeddings, extraction batches), so the
queue reads exactly what the assets would have written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.clip.store import write_embeddings, write_zero_shot
from core.ingest.ingest import DropIngestor
from core.ingest.scan import DropRef
from core.tasks.label_sets import LABEL_SETS
from core.tasks.registry import TASKS
from core.vlm.store import write_batch
from core.vlm.types import ExtractionResult
from core.warehouse import Warehouse
from tests.conftest import copy_samples

CLIP = "clip-test/a"
VLM = "vlm-test/a"
DROP = "samples"

# name -> (clip scenery top, clip margin, vlm scenery, people listed, age_gender status)
PLAN = {
    "astronaut.jpg": ("indoors", 0.6, "indoors", 1, "ok"),  # clean
    "camera.jpg": ("indoors", 0.5, "cloudy", 1, "ok"),  # CLIP and VLM disagree
    "chelsea.jpg": ("indoors", 0.02, "indoors", 1, "ok"),  # low zero-shot margin
    "coffee.jpg": ("indoors", 0.7, "indoors", 1, "truncated"),  # extraction truncated
    "coins.jpg": ("indoors", 0.4, "indoors", 1, "ok"),  # near-duplicate of hubble, differs
    "hubble_deep_field.jpg": ("night_time", 0.3, "night_time", 1, "ok"),
    "rocket.jpg": ("night_time", 0.8, "night_time", 0, "ok"),  # person described, none listed
}
AGE = "31-40"


def _probabilities(labels: tuple[str, ...], top: str, margin: float) -> np.ndarray:
    """Top label at (1 + margin) / 2 minus a bit, runner-up `margin` lower, the rest tiny."""
    rest = 0.01 * (len(labels) - 2)
    high = (1 - rest + margin) / 2
    low = high - margin
    other = next(label for label in labels if label != top)
    return np.array([high if label == top else low if label == other else 0.01 for label in labels])


def plant(warehouse: Warehouse, drop_root: Path) -> dict[str, str]:
    """Ingest the samples as drop `samples` and plant the outputs; returns name -> image_id."""
    copy_samples(drop_root, DROP)
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder(DROP))
    ids = dict(
        warehouse.rows(
            "SELECT regexp_extract(path, '[^/]+$'), image_id FROM image_files WHERE drop_id = ?",
            [DROP],
        )
    )
    names = sorted(PLAN)
    scenery, ages = LABEL_SETS["scenery"], LABEL_SETS["age_group"]
    with warehouse.transaction() as conn:
        write_zero_shot(
            conn,
            [ids[n] for n in names],
            np.stack([_probabilities(scenery.labels, PLAN[n][0], PLAN[n][1]) for n in names]),
            labels=scenery.labels,
            model_id=CLIP,
            label_set="scenery",
            fingerprint=scenery.fingerprint,
        )
        write_zero_shot(
            conn,
            [ids[n] for n in names],
            np.stack([_probabilities(ages.labels, AGE, 0.9) for n in names]),
            labels=ages.labels,
            model_id=CLIP,
            label_set="age_group",
            fingerprint=ages.fingerprint,
        )
        vectors = np.eye(len(names), 8, dtype=np.float32)  # orthogonal: no near-duplicates
        vectors[names.index("coins.jpg")] = vectors[names.index("hubble_deep_field.jpg")]
        vectors[names.index("coins.jpg"), 0] += 0.02  # cosine 0.9998 with hubble
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        write_embeddings(conn, [ids[n] for n in names], vectors, model_id=CLIP, kind="global")
    people = {
        n: ExtractionResult(
            image_id=ids[n],
            status="ok",
            parsed={
                "scenery": PLAN[n][2],
                "people": [{"age_group": AGE, "shirt_color": "blue"}] * PLAN[n][3],
            },
        )
        for n in names
    }
    write_batch(warehouse, TASKS["scenery_people"], VLM, DROP, list(people.values()))
    ages_out = [
        ExtractionResult(image_id=ids[n], status="ok", parsed={"age_group": AGE, "gender": "male"})
        if PLAN[n][4] == "ok"
        else ExtractionResult(image_id=ids[n], status=PLAN[n][4], error="hit the token limit")
        for n in names
    ]
    write_batch(warehouse, TASKS["age_gender"], VLM, DROP, ages_out)
    return ids
