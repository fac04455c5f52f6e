"""`--where "scenery = 'night_time'"`: one comparison on a task column, as parameterized SQL.

The text is parsed as `column op value`, never pasted into SQL: the column must be one of the
known task columns (from the task definitions in `core.tasks.registry`), the operator one of a
fixed set, and the value a quoted string, a number or true/false, which travels as a query
parameter. Columns: a scalar field (`scenery`, `scenery_people.scenery`) filters the task table;
a field of a list item (`people.age_group`, `scenery_people.people.age_group`) keeps images where
at least one item matches. Only rows of the task's current version (fingerprint) count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.tasks.base import Task
from core.tasks.registry import TASKS

OPERATORS = ("=", "!=", "<>", "<=", ">=", "<", ">")
_PATTERN = re.compile(
    r"^\s*(?P<column>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*){0,2})\s*"
    r"(?P<op>!=|<>|<=|>=|=|<|>)\s*"
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


@dataclass(frozen=True)
class Filter:
    column: Column
    op: str
    value: str | int | float | bool

    def sql(self, param: str) -> str:
        """`image_id IN (...)` with identifiers from the task definitions and `$param` values."""
        return (
            f'image_id IN (SELECT image_id FROM "{self.column.table}"'
            f' WHERE task_fingerprint = ${param}_fp AND "{self.column.column}" {self.op} ${param})'
        )

    def params(self, param: str) -> dict[str, object]:
        return {param: self.value, f"{param}_fp": self.column.task.fingerprint}


def known_columns(tasks: dict[str, Task] | None = None) -> list[Column]:
    """Every filterable column of every task, with the names a user may call it by."""
    columns: list[Column] = []
    for task in (tasks or TASKS).values():
        tables = task.tables
        for name, duck_type in tables.columns:
            columns.append(
                Column(task, tables.table, name, duck_type, (name, f"{task.name}.{name}"))
            )
        for child in tables.children:
            for name, duck_type in child.columns:
                aliases = (f"{child.field}.{name}", f"{task.name}.{child.field}.{name}")
                columns.append(Column(task, child.table, name, duck_type, aliases))
    return columns


def _value(text: str, column: Column) -> str | int | float | bool:
    if text.startswith("'"):
        value: str | int | float | bool = text[1:-1].replace("''", "'")
        if column.duck_type != "VARCHAR":
            raise BadFilter(f"{column.aliases[-1]} is {column.duck_type}: compare it to a number")
        return value
    if column.duck_type == "VARCHAR":
        raise BadFilter(f"{column.aliases[-1]} is text: quote the value, e.g. 'night_time'")
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
    op = "!=" if match["op"] == "<>" else match["op"]
    return Filter(found[0], op, _value(match["value"], found[0]))
