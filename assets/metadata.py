"""Shared builders for the metadata every asset shows in the Dagster UI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
import polars as pl

from core.warehouse import Warehouse

_SCALARS = (str, int, float, bool)


def column_schema(warehouse: Warehouse, table: str) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name=name, type=kind) for name, kind in warehouse.columns(table)]
    )


def _cell(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, _SCALARS):
        return value
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def preview_table(frame: pl.DataFrame) -> dg.MetadataValue:
    """A `MetadataValue.table` of a small DataFrame, with its columns typed for the UI."""
    records = [
        dg.TableRecord({k: _cell(v) for k, v in row.items()}) for row in frame.iter_rows(named=True)
    ]
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name=name, type=str(dtype)) for name, dtype in frame.schema.items()]
    )
    return dg.MetadataValue.table(records=records, schema=schema)


def counts_markdown(
    counts: Mapping[str, int], *, key: str, value: str = "files"
) -> dg.MetadataValue:
    if not counts:
        return dg.MetadataValue.md("_none_")
    lines = [f"| {key} | {value} |", "|---|---:|"]
    lines += [
        f"| {name} | {count} |" for name, count in sorted(counts.items(), key=lambda kv: -kv[1])
    ]
    return dg.MetadataValue.md("\n".join(lines))
