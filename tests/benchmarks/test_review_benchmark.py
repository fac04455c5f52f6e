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


def test_naive_and_ours_thumbnail_the_same_images_the_same_number_of_times(tmp_path: Path):
    """Equal work: the naive loop, our page and the bound each make thumbnails of the images the
    page shows (capped below the drop's size here), each timed best of the same repeats."""
    results = main(["--images", "30", "--max-images", "12", "--out", str(tmp_path / "r.json")])
    assert results["images"] == 30
    assert results["page_images"] == results["naive_images"] == results["bound_images"] == 12
    assert results["repeats"] >= 2
    assert results["naive_thumbnails_s"] > 0 and results["bound_thumbnails_s"] > 0
