"""The README table printer reads the benchmarks' JSON keys and marks what is missing."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.readme_tables import main


def test_tables_come_from_the_json_and_missing_numbers_say_so(tmp_path: Path):
    (tmp_path / "embed.json").write_text(
        json.dumps({"precision": "bf16", "ours_img_s": 23.5, "peer_clip_retrieval_img_s": None})
    )
    text = main([str(tmp_path)])
    assert "| ours (files -> DuckDB rows, bf16) | 23.5 img/s |" in text
    assert "| peer: clip-retrieval `clip_inference` | n/a |" in text
    assert "| ours: first ingest (files -> DuckDB rows) | n/a |" in text  # no ingest.json


def test_the_embedding_headline_compares_equal_precision(tmp_path: Path):
    (tmp_path / "embed.json").write_text(
        json.dumps(
            {
                "precision": "bf16",
                "naive_precision": "fp32",
                "naive_img_s": 10.0,
                "ours_img_s": 40.0,
                "ours_fp32_img_s": 17.0,
                "ours_over_naive": 1.7,
                "precision_gain": 2.35,
                "ours_bf16_over_naive": 4.0,
                "ours_over_peer": 1.4,
                "ours_bf16_over_peer": 3.3,
            }
        )
    )
    text = main([str(tmp_path)])
    assert "| ours / naive, both fp32 | 1.7x |" in text
    assert "| precision gain: ours at bf16 / ours at fp32 | 2.35x |" in text
    assert "| ours / peer, both fp32 | 1.4x (ours at bf16: 3.3x) |" in text
    assert "4.0x" not in text  # the mixed-precision ratio is no headline
