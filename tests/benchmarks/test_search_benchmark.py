"""The search benchmark runs end to end on tiny sizes and reports every promised key."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.search import main


def test_benchmark_writes_its_table_as_json(tmp_path: Path) -> None:
    out = tmp_path / "search.json"
    args = ["--sizes", "2000", "--drop", "200", "--recall-queries", "10", "--queries", "2"]
    args += ["--exact-sample", "50", "--sql-stored", "500", "--check-nprobe", "4"]
    results = main([*args, "--workdir", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    (size,) = results["results"]
    assert size["n"] == 2000 and size["index_factory"] == "Flat"  # below IVF_FROM: exact
    assert len(size["load_average_before"]) == 3 and results["cpu_count"] >= 1
    by_method = {row["method"]: row for row in size["search"]}
    sql = by_method["sql exact (core.search exact_search)"]
    assert sql["kind"] == "baseline" and sql["recall_at_10"] == 1.0
    assert sql["query_median_ms"] > 0
    end_to_end = by_method[
        "search() end to end, method=index (query vector given: no text embedding)"
    ]
    assert end_to_end["recall_at_10"] == 1.0  # a flat index's candidates, re-scored exactly
    assert size["index_open_ms"] > 0 and size["rescore_vectors_bytes"] == 2000 * 512 * 4
    for row in size["search"]:
        assert 0 <= row["recall_at_10"] <= 1 and row["query_median_ms"] > 0
    near = size["near_duplicates"]
    assert near["exact_pairs_in_sample"] > 0  # the planted copies exist
    assert near["recall_vs_exact"] == 1.0  # a flat index misses nothing
    assert [run["nprobe"] for run in near["check_runs"]][1:] == [4]
    assert near["check_s"] > 0 and near["sql_join_pairs_per_s"] > 0
