"""`--where "category = 'shoe'"`: one comparison on a field of the labeling spec, as
parameterized SQL.

The text is parsed as `column op value`, never pasted into SQL: the column must be one of the
spec's task columns (the tasks of the current labeling spec), the operator one of a fixed set,
and the value a quoted string, a number or true/false, which travels as a query parameter.
Per field kind:

- choice: `=` / `!=` a quoted value, which must be one of the field's values;
- multiple choice: `contains` a quoted value (one of the field's values);
- yes/no: `=` / `!=` true or false;
- integer and number: any comparison with a number; two filters give a range
  (`--where "item_count >= 2" --where "item_count <= 5"`);
- text: `=` / `!=` a quoted string.

A top-level field (`category`, `product.category`) filters the task table; a field of an
entity (`defects.severity`, `product.defects.severity`) keeps images where at least one entity
matches. Only rows of the task's current version (fingerprint) count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from core.labels.derive import build_tasks
from core.labels.loader import current_spec
from core.tasks.base import Task

OPERATORS = ("=", "!=", "<>", "<=", ">=", "<", ">", "contains")
_PATTERN = re.compile(
    r"^\s*(?P<column>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*){0,2})\s*"
    r"(?P<op>!=|<>|<=|>=|=|<|>|\s(?i:contains)\s)\s*"
    r"(?P<value>'(?:[^']|'')*'|-?\d+(?:\.\d+)?|true|false)\s*$",
    re.IGNORECASE,
)


class BadFilter(ValueError):
    """A `--where` text that is not `column op value` over a known task column."""


@dataclass(frozen=True)
class Column:
    """A filterable column: `table`.`column` of `task`, reached by the names in `aliases`."""

    task: Task
    table: str
    column: str
    duck_type: str
    aliases: tuple[str, ...]
    values: tuple[str, ...] = ()  # a choice or multi-choice field's allowed values


@dataclass(frozen=True)
class Filter:
    column: Column
    op: str
    value: str | int | float | bool

    def sql(self, param: str) -> str:
        """`image_id IN (...)` with identifiers from the task definitions and `$param` values."""
        column = f'"{self.column.column}"'
        test = (
            f"list_contains({column}, ${param})"
            if self.op == "contains"
            else f"{column} {self.op} ${param}"
        )
        return (
            f'image_id IN (SELECT image_id FROM "{self.column.table}"'
            f" WHERE task_fingerprint = ${param}_fp AND {test})"
        )

    def params(self, param: str) -> dict[str, object]:
        return {param: self.value, f"{param}_fp": self.column.task.fingerprint}


def _enum(prop: dict[str, Any]) -> tuple[str, ...]:
    """The allowed values of a (possibly optional) choice or multi-choice field's schema."""
    for branch in (prop, *prop.get("anyOf", ())):
        # a multi-choice array's own `enum` lists the allowed sets; its values are its items'
        if branch.get("type") == "array":
            values = branch.get("items", {}).get("enum")
        else:
            values = branch.get("enum")
        if values:
            return tuple(str(v) for v in values)
    return ()


def known_columns(tasks: dict[str, Task] | None = None) -> list[Column]:
    """Every filterable column of every task (default: the current labeling spec's), with the
    names a user may call it by."""
    columns: list[Column] = []
    tasks = build_tasks(current_spec()) if tasks is None else tasks
    for task in tasks.values():
        tables = task.tables
        properties = task.json_schema.get("properties", {})
        for name, duck_type in tables.columns:
            aliases = (name, f"{task.name}.{name}")
            values = _enum(properties.get(name, {}))
            columns.append(Column(task, tables.table, name, duck_type, aliases, values))
        for child in tables.children:
            items = properties.get(child.field, {})
            items = next(
                (b for b in (items, *items.get("anyOf", ())) if b.get("type") == "array"), {}
            )
            item_props = items.get("items", {}).get("properties", {})
            for name, duck_type in child.columns:
                aliases = (f"{child.field}.{name}", f"{task.name}.{child.field}.{name}")
                values = _enum(item_props.get(name, {}))
                columns.append(Column(task, child.table, name, duck_type, aliases, values))
    return columns


def _value(text: str, column: Column, op: str) -> str | int | float | bool:
    name = column.aliases[-1]
    if column.duck_type.endswith("[]") and op != "contains":
        raise BadFilter(f"{name} is a set of values: write `{name} contains 'value'`")
    if op == "contains" and not column.duck_type.endswith("[]"):
        raise BadFilter(f"{name} is not a multi-choice field: `contains` does not apply")
    if column.values and op not in ("=", "!=", "contains"):
        raise BadFilter(f"{name} is a choice field: compare it with = or !=")
    if text.startswith("'"):
        value: str | int | float | bool = text[1:-1].replace("''", "'")
        if column.duck_type not in ("VARCHAR", "VARCHAR[]"):
            kind = "true or false" if column.duck_type == "BOOLEAN" else "a number"
            raise BadFilter(f"{name} is {column.duck_type}: compare it to {kind}")
        if column.values and value not in column.values:
            raise BadFilter(
                f"{value!r} is not a value of {name}; its values: {', '.join(column.values)}"
            )
        return value
    if column.duck_type in ("VARCHAR", "VARCHAR[]"):
        raise BadFilter(f"{column.aliases[-1]} is text: quote the value, e.g. 'value'")
    lowered = text.lower()
    if lowered in {"true", "false"}:
        if column.duck_type != "BOOLEAN":
            raise BadFilter(f"{column.aliases[-1]} is {column.duck_type}, not BOOLEAN")
        return lowered == "true"
    if column.duck_type == "BOOLEAN":
        raise BadFilter(f"{column.aliases[-1]} is BOOLEAN: compare it to true or false")
    return float(text) if "." in text else int(text)


def parse_where(text: str, tasks: dict[str, Task] | None = None) -> Filter:
    """Parse one `column op value`; raise `BadFilter` saying what is allowed."""
    match = _PATTERN.match(text)
    if not match:
        raise BadFilter(
            f"cannot parse {text!r}: write `column op value` with op one of "
            f"{' '.join(OPERATORS)} and a 'quoted' string, a number or true/false as the value"
        )
    name = match["column"].lower()
    columns = known_columns(tasks)
    found = [column for column in columns if name in column.aliases]
    if not found:
        names = sorted({column.aliases[-1] for column in columns})
        raise BadFilter(f"unknown column {name!r}; known: {', '.join(names)}")
    if len(found) > 1:
        raise BadFilter(
            f"column {name!r} is ambiguous: say {' or '.join(c.aliases[-1] for c in found)}"
        )
    op = match["op"].strip().lower()
    op = "!=" if op == "<>" else op
    return Filter(found[0], op, _value(match["value"], found[0], op))
