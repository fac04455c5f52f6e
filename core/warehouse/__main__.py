"""Query the warehouse from a shell, safely while the pipeline writes to it.

python -m core.warehouse "SELECT reason, count(*) FROM rejected_files GROUP BY 1"
python -m core.warehouse --db other.duckdb "SELECT * FROM images WHERE width > ?" 1000
"""

from __future__ import annotations

import argparse
import os
import sys

import polars as pl

from core.warehouse import Warehouse, WarehouseNotFound


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.warehouse", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sql", help="one SQL statement; use ? for parameters")
    parser.add_argument("params", nargs="*", help="values for the ? placeholders, in order")
    parser.add_argument(
        "--db",
        default=os.environ.get("IMAGE_PIPELINE_WAREHOUSE", "data/warehouse.duckdb"),
        help="DuckDB file (default: $IMAGE_PIPELINE_WAREHOUSE or data/warehouse.duckdb)",
    )
    parser.add_argument("--rows", type=int, default=50, help="rows to print (default 50)")
    args = parser.parse_args(argv)
    try:
        frame = Warehouse(args.db).query(args.sql, args.params or None)
    except WarehouseNotFound as error:
        print(error, file=sys.stderr)
        return 2
    with pl.Config(tbl_rows=args.rows, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=80):
        print(frame)
    return 0


if __name__ == "__main__":
    sys.exit(main())
