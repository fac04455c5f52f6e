"""The extraction-client benchmark runs end to end on a few images and reports its promised keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.extract_client import main
from core.tasks.registry import TASKS
from doubles.sglang_server import schema_answer


def test_benchmark_writes_its_table_as_json(tmp_path: Path):
    out = tmp_path / "extract_client.json"
    results = main(
        [
            "--distinct", "1", "--cpu-images", "3", "--server-images", "6",
            "--fanout-images", "6", "--service-time", "0.05", "--single-service-time", "0.02",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == results
    assert results["lost_images"] == 0  # every answer of the simulated fleet validated as ok
    assert set(results["client_cpu_s_per_image_by_kind"]) == {"bundled", "640x480", "4000x3000"}
    for key in ("client_cpu_s_per_image", "host_feed_limit_img_s", "fanout_capacity_ratio"):
        assert results[key] > 0, key
    # from the unrounded CPU seconds, so the JSON's rounded figure reproduces it to ~0.1
    assert results["host_feed_limit_img_s"] == pytest.approx(
        2 / results["client_cpu_s_per_image"], abs=0.1
    )
    assert 0 < results["fanout_capacity_ratio"] <= 1.0  # slot-seconds cannot exceed the slots


def test_the_simulated_fleet_answers_every_task_validly_and_differently():
    for task in TASKS.values():
        answers = {json.dumps(schema_answer(task.json_schema, n)) for n in range(6)}
        for text in answers:
            task.parse(text)  # raises if the schema would refuse it
        assert len(answers) > 1, task.name  # built per request, not one cached answer
