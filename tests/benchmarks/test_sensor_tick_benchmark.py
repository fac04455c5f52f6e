"""The sensor tick benchmark runs end to end on a small root and reports every promised key."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.sensor_tick import main


def test_benchmark_writes_its_table_as_json(tmp_path: Path):
    out = tmp_path / "sensor_tick.json"
    results = main(["--drops", "20", "--files", "5", "--repeat", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert results["unchanged_tick_folders_walked"] == 0  # skipped by their signatures
    assert results["full_walk_tick_folders_walked"] == 20
    for key in ("first_tick_s", "unchanged_tick_s", "full_walk_tick_s", "cursor_bytes"):
        assert results[key] > 0
