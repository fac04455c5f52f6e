"""The embedding benchmark runs end to end on a tiny drop and reports every promised key.

It runs the tiny stand-in architecture here to stay fast; the default is ViT-B-32.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.embed import main
from core.clip.standin import STANDIN_MODEL


def test_benchmark_writes_its_table_as_json(tmp_path: Path):
    out = tmp_path / "embed.json"
    results = main(
        [
            "--model", STANDIN_MODEL, "--files", "6", "--small-files", "3",
            "--large-fraction", "0.5", "--sample", "2", "--batch-size", "2",
            "--model-batches", "1", "--model-seconds", "0", "--decode-sample", "2",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == results
    assert results["files"] == results["rows_written"] == 6 and results["large_files"] == 3
    for key in (
        "naive_img_s",
        "ours_img_s",
        "model_only_img_s",
        "decode_only_img_s",
        "ceiling_img_s",
        "ours_over_ceiling",
        "ours_over_naive",
        "peak_rss_mb_small",
        "peak_rss_mb_large",
    ):
        assert results[key] > 0, key
    assert results["ceiling_img_s"] <= min(
        results["model_only_img_s"], results["decode_only_img_s"]
    )
    assert results["bf16_vs_fp32_min_cosine"] >= 0.99
