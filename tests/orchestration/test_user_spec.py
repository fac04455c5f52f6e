"""A user's own spec end to end, in process: labels/examples/products.yaml (a field of every kind)
and its labelled CSV, the whole chain on the bundled samples with the stand-in models.

The spec is read when the pipeline's modules are imported, so the chain runs in a fresh process
with IMAGE_PIPELINE_LABELS set, as a user would start it (`tests/fixtures/spec_demo.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from orchestration.settings import REPO_ROOT


def test_the_example_product_spec_runs_end_to_end_in_process(tmp_path):
    env = {
        **os.environ,
        "IMAGE_PIPELINE_LABELS": "labels/examples/products.yaml",
        "IMAGE_PIPELINE_LABELLED": "data/labelled/products.csv",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.fixtures.spec_demo", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["success"] and out["failed_steps"] == []
    # a row per image per task: every one an answer or an honest failure row
    assert out["images"] == 7
    assert sum(n for task, _, n in out["extractions"] if task == "product") == 7
    product = out["tables"]["task_product"]
    assert product["columns"] == {
        "image_id": "VARCHAR",
        "model_id": "VARCHAR",
        "task_fingerprint": "VARCHAR",
        "category": "VARCHAR",
        "attributes": "VARCHAR[]",
        "condition": "VARCHAR",
        "packaged": "BOOLEAN",
        "item_count": "BIGINT",
        "fill": "DOUBLE",
        "title": "VARCHAR",
    }
    ok = sum(n for task, status, n in out["extractions"] if status == "ok")
    assert product["rows"] == ok
    assert set(out["tables"]["task_product__defects"]["columns"]) >= {"idx", "defect", "severity"}
    # CLIP zero-shot for both choice fields with phrases; the multi-label one with decided sets
    assert out["zero_shot"] == [["attributes", 7, 7], ["category", 7, 0]]
    assert out["agreement"] == [["attributes", "jaccard", 7], ["category", "exact", 7]]
    # every field kind's metric against data/labelled/products.csv
    metrics = {(row["field"], row["source"]): set(row) for row in out["evaluation"]}
    assert {"accuracy", "macro_f1"} <= metrics[("category", "vlm")]
    assert "adjacent_accuracy" in metrics[("condition", "vlm")]
    assert {"micro_f1", "macro_f1", "subset_accuracy", "jaccard"} <= metrics[("attributes", "vlm")]
    assert "jaccard" in metrics[("attributes", "clip_zero_shot")]
    assert "f1" in metrics[("packaged", "vlm")]
    assert "mae" in metrics[("item_count", "vlm")] and "mae" in metrics[("fill", "vlm")]
    assert all(row["standin"] and row["n"] == 3 for row in out["evaluation"])
