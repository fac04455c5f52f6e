"""The extraction-client benchmark runs end to end on a few images and reports its promised keys."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.extract_client import main


def test_benchmark_writes_its_table_as_json(tmp_path: Path):
    out = tmp_path / "extract_client.json"
    results = main(
        ["--images", "24", "--distinct", "3", "--service-time", "0.05", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == results
    assert results["lost_images"] == 0
    for key in ("capacity_ratio", "capacity_ratio_faults"):
        assert results[key] > 0
