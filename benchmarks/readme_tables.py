"""Print the README's benchmark tables (markdown) from the JSON files `make bench` writes.

Usage: python benchmarks/readme_tables.py [data/bench]. A missing file or key prints "n/a", so
a partial run still shows what it measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _get(results: dict, key: str, unit: str = "") -> str:
    value = results.get(key)
    return "n/a" if value is None else f"{value}{unit}"


def ingest_table(r: dict) -> list[str]:
    return [
        "| | |",
        "|---|---|",
        f"| ours: first ingest (files -> DuckDB rows) | {_get(r, 'ingest_files_s', ' files/s')} |",
        "| naive: hashlib + `Image.open().load()`, one process"
        f" | {_get(r, 'naive_files_s', ' files/s')} |",
        "| single-read bound: read once, hash + header, all cores, no DB"
        f" | {_get(r, 'single_read_bound_files_s', ' files/s')} |",
        "| single read + our 1/8 validating decode, all cores, no DB"
        f" | {_get(r, 'single_read_validate_files_s', ' files/s')} |",
        f"| ours / naive | {_get(r, 'ours_over_naive', 'x')} |",
        f"| ours / single-read bound | {_get(r, 'ours_over_single_read_bound')} |",
        f"| re-scan of the unchanged drop | {_get(r, 'rescan_s', ' s')} |",
        f"| peak RSS of the ingesting process | {_get(r, 'peak_rss_mb', ' MB')} |",
    ]


def embed_table(r: dict) -> list[str]:
    other = "fp32" if r.get("precision") != "fp32" else "bf16"
    # Headline ratios are at equal precision (fp32, as naive and the peer on a CPU); the gain of
    # the lower precision is its own row.
    low = r.get("low_precision") or (r.get("precision") if other == "fp32" else other)
    return [
        "| | |",
        "|---|---|",
        "| naive: open_clip README recipe (fp32, batch 32, one process)"
        f" | {_get(r, 'naive_img_s', ' img/s')} |",
        f"| peer: clip-retrieval `clip_inference` | {_get(r, 'peer_clip_retrieval_img_s', ' img/s')} |",
        f"| ours (files -> DuckDB rows, {r.get('precision')}) | {_get(r, 'ours_img_s', ' img/s')} |",
        f"| ours at {other} | {_get(r, f'ours_{other}_img_s', ' img/s')} |",
        f"| model only ({r.get('precision')}) | {_get(r, 'model_only_img_s', ' img/s')} |",
        f"| decode only | {_get(r, 'decode_only_img_s', ' img/s')} |",
        "| shared-core bound 1/(1/model + 1/decode)"
        f" | {_get(r, 'shared_core_bound_img_s', ' img/s')} |",
        "| compute bound: GEMM rate / FLOPs per image (bf16 / fp32)"
        f" | {_get(r, 'compute_bound_bf16_img_s')} / {_get(r, 'compute_bound_fp32_img_s')} img/s |",
        f"| ours / naive, both fp32 | {_get(r, 'ours_over_naive', 'x')} |",
        f"| ours / peer, both fp32 | {_get(r, 'ours_over_peer', 'x')} (ours at {low}: "
        f"{_get(r, f'ours_{low}_over_peer', 'x')}) |",
        f"| precision gain: ours at {low} / ours at fp32 | {_get(r, 'precision_gain', 'x')} |",
        f"| ours / shared-core bound | {_get(r, 'ours_over_shared_core_bound')} |",
        f"| model only / compute bound | {_get(r, 'model_only_over_compute_bound')} |",
        "| bf16 vs fp32 cosine (random weights, sample photos, min)"
        f" | {_get(r, 'bf16_vs_fp32_min_cosine')} |",
        f"| peer note | {r.get('peer_note', 'n/a')} |",
    ]


def main(argv: list[str] | None = None) -> str:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else Path("data/bench")

    def load(name: str) -> dict:
        path = folder / name
        return json.loads(path.read_text()) if path.exists() else {}

    text = "\n".join(
        ["**Ingestion**", "", *ingest_table(load("ingest.json")), "", "**CLIP embeddings**", "",
         *embed_table(load("embed.json"))]
    )  # fmt: skip
    print(text)
    return text


if __name__ == "__main__":
    main()
