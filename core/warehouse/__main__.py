"""Query the warehouse from a shell, read-only, on either backend (`make sql` runs this).

python -m core.warehouse                         # an interactive SQL prompt; end statements with ;
python -m core.warehouse "SELECT reason, count(*) FROM rejected_files GROUP BY 1"
python -m core.warehouse --db other.duckdb "SELECT * FROM images WHERE width > ?" 1000

The warehouse is $IMAGE_PIPELINE_WAREHOUSE (a DuckDB file, default data/warehouse.duckdb, or
`ducklake:postgres:<conninfo>` with the password in PGPASSWORD/PGPASSFILE). On the file each
statement opens the file read-only and closes it at once, so runs are never blocked for longer
than one query; on the lake the catalog is attached READ_ONLY and readers never block writers.
"""

from __future__ import annotations

import argparse
import os
import sys

import duckdb
import polars as pl

from core.warehouse import FileWarehouse, Warehouse, WarehouseNotFound
from core.warehouse.connection import is_lake_target


def _open(target: str, data_path: str | None) -> Warehouse:
    if is_lake_target(target):
        from core.warehouse.lake import LakeWarehouse

        return LakeWarehouse(target, data_path=data_path, read_only=True)
    return FileWarehouse(target)


def _print(frame: pl.DataFrame, rows: int) -> None:
    with pl.Config(tbl_rows=rows, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=80):
        print(frame)


def shell(warehouse: Warehouse, rows: int) -> int:
    """Read `;`-terminated statements from stdin and print each result; errors do not end it."""
    print(f"{warehouse!r}, read-only. End statements with ; and quit with Ctrl-D.", flush=True)
    buffer: list[str] = []
    while True:
        try:
            line = input("sql> " if not buffer else "...> ")
        except EOFError:
            print()
            return 0
        buffer.append(line)
        text = "\n".join(buffer).strip()
        if not text.endswith(";"):
            continue
        buffer.clear()
        try:
            _print(warehouse.query(text.rstrip(";")), rows)
        except (duckdb.Error, WarehouseNotFound) as error:
            print(f"error: {error}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.warehouse", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sql", nargs="?", help="one SQL statement (none: an interactive prompt)")
    parser.add_argument("params", nargs="*", help="values for the ? placeholders, in order")
    parser.add_argument(
        "--db",
        default=os.environ.get("IMAGE_PIPELINE_WAREHOUSE", "data/warehouse.duckdb"),
        help="DuckDB file or ducklake:postgres:<conninfo>"
        " (default: $IMAGE_PIPELINE_WAREHOUSE or data/warehouse.duckdb)",
    )
    parser.add_argument(
        "--data-path",
        default=os.environ.get("IMAGE_PIPELINE_LAKE_DATA_PATH"),
        help="the lake's data path (default: $IMAGE_PIPELINE_LAKE_DATA_PATH)",
    )
    parser.add_argument("--rows", type=int, default=50, help="rows to print (default 50)")
    args = parser.parse_args(argv)
    warehouse = _open(args.db, args.data_path)
    if args.sql is None:
        return shell(warehouse, args.rows)
    try:
        frame = warehouse.query(args.sql, args.params or None)
    except WarehouseNotFound as error:
        print(error, file=sys.stderr)
        return 2
    _print(frame, args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
