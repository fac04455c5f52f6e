"""Calibration of the VLM's per-field confidence on the labelled set: expected calibration error
per field in `evaluations`, reliability bins in its details, against a hand computation."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from core.quality.evaluation import ECE, calibration, evaluate_changed
from core.quality.labelled import load_folder
from core.tasks.registry import get_task
from core.vlm.store import write_batch
from core.vlm.types import ExtractionResult
from core.warehouse import Warehouse

TRUTH = ["21-30", "21-30", "31-40", "51-60", "18-20"]
PRED = ["21-30", "31-40", "51-60", "41-50", "31-40"]  # right, then four wrong
CONFIDENCE = [0.95, 0.85, 0.35, 0.31, None]  # the last answer came without logprobs


def test_calibration_bins_and_ece_by_hand():
    ece, bins = calibration(
        [0.95, 0.85, 0.35, 0.31, 1.0, 0.0], [True, False, False, False, True, False]
    )
    # bins: [0.9, 1.0] holds 0.95 and 1.0 (both right): |1 - 0.975| = 0.025, 2 of 6;
    # [0.8, 0.9): 0.85 wrong: 0.85, 1 of 6; [0.3, 0.4): 0.35, 0.31 wrong: 0.33, 2 of 6;
    # [0.0, 0.1): 0.0 wrong: 0, 1 of 6
    assert ece == pytest.approx((2 * 0.025 + 0.85 + 2 * 0.33 + 0) / 6)
    assert [(b["lower"], b["n"]) for b in bins] == [(0.0, 1), (0.3, 2), (0.8, 1), (0.9, 2)]
    assert bins[1]["mean_confidence"] == pytest.approx(0.33) and bins[1]["accuracy"] == 0


def _labelled(tmp_path, warehouse: Warehouse, model_id: str, confidences):
    root = tmp_path / "labelled"
    for i, label in enumerate(TRUTH):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 40, 10, 10)).save(root / label / f"{i}.png")
    labelled = load_folder(root)
    ids = {item.path.rsplit("/", 1)[1]: item.image_id for item in labelled.items}
    warehouse.ensure_schema()
    task = get_task("age_gender")
    results = [
        ExtractionResult(
            image_id=ids[f"{i}.png"],
            status="ok",
            parsed={"age_group": value, "gender": "female"},
            confidence={"age_group": confidence, "gender": 0.5} if confidences else None,
        )
        for i, (value, confidence) in enumerate(zip(PRED, CONFIDENCE, strict=True))
    ]
    write_batch(warehouse, task, model_id, "labelled", results)
    return labelled


def test_ece_per_field_is_stored_in_evaluations_with_its_reliability_bins(tmp_path, warehouse):
    labelled = _labelled(tmp_path, warehouse, "llava-real", confidences=True)
    evaluate_changed(warehouse, labelled, run_id="r1")
    rows = warehouse.rows(
        "SELECT field, source, model_id, value, n, details FROM evaluations WHERE metric = ?",
        [ECE],
    )
    assert len(rows) == 1
    field, source, model_id, value, n, details = rows[0]
    assert (field, source, model_id, n) == ("age_group", "vlm", "llava-real", 4)
    # 0.95 right: |1 - 0.95| (1 of 4); 0.85 wrong: 0.85 (1 of 4); 0.35, 0.31 wrong: 0.33 (2 of 4)
    assert value == pytest.approx(0.25 * 0.05 + 0.25 * 0.85 + 0.5 * 0.33)
    bins = json.loads(details)["bins"]
    assert [(b["lower"], b["upper"], b["n"]) for b in bins] == [
        (0.3, 0.4, 2),
        (0.8, 0.9, 1),
        (0.9, 1.0, 1),
    ]
    assert [b["accuracy"] for b in bins] == [0.0, 0.0, 1.0]
    # the accuracy row of the same field is still over every answered image
    accuracy = warehouse.rows(
        "SELECT value, n FROM evaluations WHERE metric = 'accuracy' AND field = 'age_group'"
    )
    assert accuracy == [(pytest.approx(0.2), 5)]


def test_no_logprobs_no_calibration_row(tmp_path, warehouse):
    labelled = _labelled(tmp_path, warehouse, "other-server", confidences=False)
    evaluate_changed(warehouse, labelled, run_id="r1")
    assert warehouse.rows("SELECT count(*) FROM evaluations WHERE metric = ?", [ECE]) == [(0,)]
    assert warehouse.rows("SELECT count(*) FROM evaluations WHERE metric = 'accuracy'")[0][0] > 0
