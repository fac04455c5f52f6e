"""Search the stored images by text or by example, from a shell.

python -m core.search "a dog on a beach" --k 20
python -m core.search --like samples/chelsea.jpg --drop samples
python -m core.search "a red shoe" --where "category = 'shoe'" --where "attributes contains 'red'"
python -m core.search --like samples/a.jpg --where "item_count >= 2" --where "defects.severity > 1"
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import polars as pl

from core.clip.loading import ModelUnavailable
from core.search.filters import BadFilter
from core.search.query import SearchError, search
from core.warehouse import Warehouse, WarehouseNotFound


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.search", description=__doc__.split("\n")[0]
    )
    parser.add_argument("text", nargs="?", help="what to look for, in words")
    parser.add_argument("--like", help="an image file, or a stored image's id or path")
    parser.add_argument("--k", type=int, default=20, help="results to print (default 20)")
    parser.add_argument(
        "--drop", action="append", default=[], help="only images of this drop (repeatable)"
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        help='"column op value" on a field of the labeling spec, e.g. "category = \'shoe\'", '
        '"attributes contains \'red\'", "item_count >= 2" (repeatable; all must hold)',
    )
    parser.add_argument("--model", help="model_id of the embeddings (needed if several are stored)")
    parser.add_argument("--pretrained", help="checkpoint path, for a fine-tuned model's id")
    parser.add_argument(
        "--method", choices=["auto", "exact", "index"], default="auto", help="default: auto"
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("IMAGE_PIPELINE_WAREHOUSE", "data/warehouse.duckdb"),
        help="DuckDB file (default: $IMAGE_PIPELINE_WAREHOUSE or data/warehouse.duckdb)",
    )
    parser.add_argument(
        "--standin-cache",
        default=os.environ.get("IMAGE_PIPELINE_MODEL_CACHE", "data/models"),
        help="where the stand-in lives (default: $IMAGE_PIPELINE_MODEL_CACHE or data/models)",
    )
    args = parser.parse_args(argv)
    try:
        frame = search(
            Warehouse(args.db),
            args.text,
            like=args.like,
            k=args.k,
            drops=args.drop,
            where=args.where,
            model_id=args.model,
            pretrained=args.pretrained,
            method=args.method,
            standin_cache=Path(args.standin_cache),
        )
    except (SearchError, BadFilter, WarehouseNotFound, ModelUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if frame.is_empty():
        print("no images match", file=sys.stderr)
        return 0
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=240, fmt_str_lengths=160):
        print(frame.select("rank", "path", pl.col("score").round(4), "labels"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
