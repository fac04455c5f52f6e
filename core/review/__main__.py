"""Round trip through Label Studio from a shell.

python -m core.review export --drop samples            # data/reviews/samples.json + config
python -m core.review import data/reviews/export.json  # Label Studio's JSON export
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.review.labelstudio import ReviewImportError
from core.review.store import DEFAULT_IMAGE_PREFIX, import_reviews, write_export
from core.warehouse import Warehouse, WarehouseNotFound


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.review", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("IMAGE_PIPELINE_WAREHOUSE", "data/warehouse.duckdb"),
        help="DuckDB file (default: $IMAGE_PIPELINE_WAREHOUSE or data/warehouse.duckdb)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a drop's review queue as Label Studio tasks")
    export.add_argument("--drop", required=True, help="drop id (the partition)")
    export.add_argument("--out", type=Path, help="tasks file (default data/reviews/<drop>.json)")
    export.add_argument(
        "--image-prefix",
        default=DEFAULT_IMAGE_PREFIX,
        help="prefix of each image's path under the drop root (default: Label Studio local files,"
        f" {DEFAULT_IMAGE_PREFIX!r}); e.g. http://127.0.0.1:8081/ for a file server",
    )
    imported = commands.add_parser("import", help="import a Label Studio JSON export")
    imported.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    warehouse = Warehouse(args.db)
    try:
        if args.command == "export":
            out = args.out or Path("data/reviews") / f"{args.drop}.json"
            tasks, config, count = write_export(
                warehouse, args.drop, out, image_prefix=args.image_prefix
            )
            print(f"{count} tasks      {tasks}\nlabeling config {config}")
            return 0
        if not args.file.is_file():
            print(f"{args.file}: no such file", file=sys.stderr)
            return 2
        counts = import_reviews(warehouse, args.file)
        print(
            f"imported {counts['labels']} labels of {counts['images']} images from {args.file}"
            + (
                f" ({counts['kept_newer']} older than stored values, kept)"
                if counts["kept_newer"]
                else ""
            )
        )
        return 0
    except (WarehouseNotFound, ReviewImportError, ValueError) as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
