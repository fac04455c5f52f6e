"""Shared builders for the metadata every asset shows in the Dagster UI.

Dagster renders a `MetadataValue.table` as a table inline on the asset's Events page, while a
dict as `MetadataValue.json` shows as raw JSON: per-kind, per-task and per-label-set numbers go
into tables with `kind`, `task`, `label_set` ... as columns, never into path-like keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import polars as pl

from core.warehouse import Warehouse
from core.warehouse.columns import describe, table_columns

# One asset group for the whole chain: Dagster's lineage page then draws every asset with its
# check badges in one view (with several groups it opens on collapsed group boxes, and the
# assets and their checks are a click and a zoom away).
GROUP = "image_pipeline"
_SCALARS = (str, int, float, bool)
# Column types for `records_table`, as Dagster's TableColumn names them.
_TYPES = {bool: "bool", int: "int", float: "float", str: "string"}


def column_schema(warehouse: Warehouse, table: str) -> dg.TableSchema:
    """The table's columns as the warehouse has them now, each with its documented meaning."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=name, type=kind, description=describe(table, name))
            for name, kind in warehouse.columns(table)
        ]
    )


def definition_schema(table: str) -> dict[str, object]:
    """Definition metadata naming the table and its described columns: the asset's Overview
    shows them before anything was materialized."""
    return {
        "dagster/table_name": table,
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn(name=name, type=kind, description=description)
                for name, kind, description in table_columns(table)
            ]
        ),
    }


def _cell(value: Any) -> str | int | float | bool | None:
    """A table cell as the UI shows it: floats to 4 significant digits (the full value is
    in the warehouse), lists joined."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if value is None or isinstance(value, _SCALARS):
        return value
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, list | tuple | str) and len(value) == 0)


def preview_table(frame: pl.DataFrame) -> dg.MetadataValue:
    """A `MetadataValue.table` of a small DataFrame, with its columns typed for the UI; a
    column empty in every row is left out (the panel is narrow: every column costs width)."""
    if frame.height:
        frame = frame.select(
            name for name in frame.columns if not all(_empty(v) for v in frame[name].to_list())
        )
    records = [
        dg.TableRecord({k: _cell(v) for k, v in row.items()}) for row in frame.iter_rows(named=True)
    ]
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name=name, type=str(dtype)) for name, dtype in frame.schema.items()]
    )
    return dg.MetadataValue.table(records=records, schema=schema)


def previews_by(frame: pl.DataFrame, column: str, key: str = "preview") -> dict[str, object]:
    """One preview table per value of `column` (`preview · <value>`, ...), without that column:
    narrower than one table repeating it on every row."""
    return {
        f"{key} · {value}": preview_table(rows.drop(column))
        for (value,), rows in frame.group_by(column, maintain_order=True)
    }


def records_table(
    rows: Sequence[Mapping[str, Any]], descriptions: Mapping[str, str]
) -> dg.MetadataValue:
    """A small table from dicts: one column per `descriptions` key, in that order, typed from
    the first non-null value; `descriptions` are what `Show schema` says about each column."""
    columns = []
    for name, description in descriptions.items():
        sample = next((row[name] for row in rows if row.get(name) is not None), "")
        kind = next((t for py, t in _TYPES.items() if type(sample) is py), "string")
        columns.append(dg.TableColumn(name=name, type=kind, description=description))
    records = [
        dg.TableRecord({name: _cell(row.get(name)) for name in descriptions}) for row in rows
    ]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


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
