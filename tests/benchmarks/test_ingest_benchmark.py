"""The ingest benchmark runs end to end on a small drop and reports every promised key."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.ingest import main


def test_benchmark_writes_its_table_as_json(tmp_path: Path):
    out = tmp_path / "ingest.json"
    results = main(
        ["--files", "24", "--large-fraction", "0.25", "--sample", "8", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == results
    assert results["files"] == 24 and results["large_files"] == 6
    assert results["rescan_files_processed"] == 0  # the re-scan read nothing
    for key in (
        "ingest_files_s",
        "rescan_s",
        "peak_rss_mb",
        "naive_files_s",
        "single_read_bound_files_s",
        "single_read_validate_files_s",
    ):
        assert results[key] > 0, key
    ratio = results["ingest_files_s"] / results["single_read_bound_files_s"]
    assert abs(results["ours_over_single_read_bound"] - ratio) < 0.01
    # Validating (a 1/8-scale decode) is more work than a header parse on the same bytes.
    assert results["single_read_validate_files_s"] < results["single_read_bound_files_s"]
