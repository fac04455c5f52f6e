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
