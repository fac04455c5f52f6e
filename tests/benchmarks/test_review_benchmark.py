"""The review benchmark runs end to end on a small drop and reports every promised key."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.review import main


def test_benchmark_writes_its_table_as_json(tmp_path: Path):
    out = tmp_path / "review.json"
    results = main(["--images", "30", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert results["images"] == results["page_images"] == 30
    assert 0 < results["queued"] <= results["flagged"] <= 30
    for key in ("queue_s", "page_first_s", "page_rebuild_s", "naive_thumbnails_s"):
        assert results[key] > 0
