"""What an extraction task is, and everything derived from it.

A task is a name, a short instruction and a pydantic model (built from the labeling spec by
`core.labels.derive`). From that one definition come the
prompt text, the JSON schema sent for constrained decoding, validation of what a model returns,
a fingerprint that versions the task, and the DuckDB tables its `ok` results are flattened into:
scalar fields become columns of `task_<name>`, a list of enum values (multi-label) a list column
(`VARCHAR[]`), each list of sub-models a child table `task_<name>__<field>` with one row per
item (`idx` keeps the model's order).

Every string and list in a task model must be bounded, so constrained decoding always ends:
lists by `max_length` (JSON schema `maxItems`), free-text strings by a `pattern` with bounded
quantifiers only. xgrammar (SGLang's default grammar backend) rejects a string schema that
combines `pattern` with `minLength`/`maxLength`, and a length-bounded string without a pattern
lets raw control characters through, which then fail `json.loads`.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "ChildTable",
    "Task",
    "TaskModel",
    "TaskOutputError",
    "TaskTables",
]


class TaskModel(BaseModel):
    """Base of every task's output model: unknown keys are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskOutputError(ValueError):
    """A model's output is not valid JSON for the task's schema; the message says why."""


_DUCK_TYPES: dict[type, str] = {str: "VARCHAR", int: "BIGINT", float: "DOUBLE", bool: "BOOLEAN"}
_BOUNDED_QUANTIFIER = re.compile(r"(?<!\\)[*+]|\{\d+,\}")


def _duck_type(annotation: Any, where: str) -> str:
    if get_origin(annotation) is Literal:
        kinds = {type(value) for value in get_args(annotation)}
        if len(kinds) != 1 or next(iter(kinds)) not in _DUCK_TYPES:
            raise TypeError(f"{where}: Literal values must share one scalar type")
        return _DUCK_TYPES[next(iter(kinds))]
    if annotation in _DUCK_TYPES:
        return _DUCK_TYPES[annotation]
    raise TypeError(f"{where}: only scalars, Literals and lists of sub-models are supported")


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X; `Annotated[X, ...]` -> X."""
    if _is_optional(annotation):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _scalar_list_item(annotation: Any) -> Any | None:
    """The item type of a list of scalars or Literals (a multi-label field), else None."""
    annotation = _unwrap(annotation)
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        if not (isinstance(item, type) and issubclass(item, BaseModel)):
            return item
    return None


def _column_type(annotation: Any, where: str) -> str:
    item = _scalar_list_item(annotation)
    if item is not None:
        return _duck_type(item, where) + "[]"
    return _duck_type(_unwrap(annotation), where)


def _list_item(annotation: Any) -> type[BaseModel] | None:
    annotation = _unwrap(annotation)
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _is_optional(annotation: Any) -> bool:
    origin = get_origin(annotation)
    return (origin is typing.Union or origin is types.UnionType) and type(None) in get_args(
        annotation
    )


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Replace `$ref`s by their definitions: one self-contained schema every backend accepts."""
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            return _inline_refs(defs[name], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _strip_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _strip_titles(v)
            for k, v in node.items()
            if not (k == "title" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def _check_bounded(node: Any, path: str) -> None:
    """Refuse schemas that let constrained decoding run forever or that xgrammar rejects."""
    if not isinstance(node, dict):
        return
    for keyword in ("uniqueItems", "multipleOf", "format"):
        if keyword in node:  # xgrammar accepts these and then emits what violates them
            raise TypeError(f"{path}: the grammar cannot enforce `{keyword}`")
    for option in node.get("anyOf", []):
        _check_bounded(option, path)
    kind = node.get("type")
    if kind == "string" and "enum" not in node and "const" not in node:
        pattern = node.get("pattern")
        if pattern is None:
            raise TypeError(f"{path}: free-text strings need a bounded `pattern`")
        if "maxLength" in node or "minLength" in node or "format" in node:
            raise TypeError(f"{path}: xgrammar rejects `pattern` combined with length or format")
        if _BOUNDED_QUANTIFIER.search(pattern):
            raise TypeError(f"{path}: pattern {pattern!r} has an unbounded quantifier")
        if not (pattern.startswith("^") and pattern.endswith("$")):
            raise TypeError(f"{path}: pattern {pattern!r} must be anchored with ^...$")
    if kind == "array" and "maxItems" not in node:
        raise TypeError(f"{path}: lists need `max_length` (maxItems)")
    for key, value in node.get("properties", {}).items():
        _check_bounded(value, f"{path}.{key}")
    if "items" in node:
        _check_bounded(node["items"], f"{path}[]")


def _close_objects(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _close_objects(v) for k, v in node.items()}
        if node.get("type") == "object":
            node["additionalProperties"] = False
            node["required"] = list(node.get("properties", {}))
        return node
    if isinstance(node, list):
        return [_close_objects(v) for v in node]
    return node


@dataclass(frozen=True)
class ChildTable:
    """`task_<name>__<field>`: one row per item of a list-of-sub-models field."""

    field: str
    table: str
    columns: tuple[tuple[str, str], ...]  # the sub-model's fields, after the key columns


@dataclass(frozen=True)
class TaskTables:
    table: str
    columns: tuple[tuple[str, str], ...]  # scalar fields, after the key columns
    children: tuple[ChildTable, ...]

    KEY_COLUMNS: typing.ClassVar[tuple[tuple[str, str], ...]] = (
        ("image_id", "VARCHAR"),
        ("model_id", "VARCHAR"),
        ("task_fingerprint", "VARCHAR"),
    )

    def ddl(self) -> list[str]:
        """CREATE TABLE statements for the task table and its child tables (idempotent)."""

        def create(name: str, columns: tuple[tuple[str, str], ...], key: list[str]) -> str:
            body = ", ".join(f'"{c}" {t}' for c, t in columns)
            # No PRIMARY KEY (the lake has none): writers delete a key's rows before inserting
            # them, in one transaction (core/vlm/store.py).
            del key
            return f'CREATE TABLE IF NOT EXISTS "{name}" ({body})'

        key = [name for name, _ in self.KEY_COLUMNS]
        statements = [create(self.table, self.KEY_COLUMNS + self.columns, key)]
        for child in self.children:
            statements.append(
                create(
                    child.table,
                    (*self.KEY_COLUMNS, ("idx", "INTEGER"), *child.columns),
                    [*key, "idx"],
                )
            )
        return statements

    @property
    def names(self) -> list[str]:
        return [self.table, *(child.table for child in self.children)]


@dataclass(frozen=True)
class Task:
    """One extraction task. `name` is a SQL-safe identifier; `goal` says what to look at."""

    name: str
    goal: str
    model: type[TaskModel]
    max_completion_tokens: int = 256
    # The spec this task was built from (`core.labels.spec.TaskSpec`): field kinds, ordinal,
    # CLIP phrases, multi-label bounds. Not part of the fingerprint (the schema and prompt are).
    spec: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", self.name):
            raise ValueError(f"task name {self.name!r} must be a lower-case SQL identifier")
        _check_bounded(self.json_schema, self.name)
        _ = self.tables  # unsupported field types fail when the task is defined

    # -- derived: JSON schema, prompt, fingerprint --------------------------------------------

    @cached_property
    def json_schema(self) -> dict[str, Any]:
        """Self-contained (no `$ref`), closed (no extra keys), every field required."""
        raw = self.model.model_json_schema()
        schema = _inline_refs(raw, raw.get("$defs", {}))
        return _close_objects(_strip_titles(schema)) | {"title": self.name}

    @cached_property
    def schema_json(self) -> str:
        """The schema as one canonical string: servers cache compiled grammars per string."""
        return json.dumps(self.json_schema, separators=(",", ":"))

    @cached_property
    def instruction(self) -> str:
        """The prompt text: the goal, each field with its allowed values, and the output rule."""
        lines = [self.goal.strip(), "", "Answer with one compact JSON object with these keys:"]
        lines += _describe(self.json_schema, indent="")
        lines += [
            "",
            "Use only the allowed values. Output JSON only: no prose, no markdown, no extra keys.",
        ]
        return "\n".join(lines)

    @cached_property
    def fingerprint(self) -> str:
        """Hash of instruction, schema and token budget: editing any re-extracts, no manual
        version bump. The budget is in it because `truncated` answers are final only for the
        budget they hit: raising it must make them pending again."""
        digest = hashlib.sha256()
        digest.update(self.instruction.encode())
        digest.update(b"\0")
        digest.update(self.schema_json.encode())
        digest.update(b"\0")
        digest.update(str(self.max_completion_tokens).encode())
        return digest.hexdigest()[:16]

    # -- validation ---------------------------------------------------------------------------

    def parse(self, text: str) -> TaskModel:
        """Validate a model's raw output; raises `TaskOutputError` saying what is wrong."""
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as error:
            raise TaskOutputError(f"not valid JSON: {error}") from error
        if not isinstance(decoded, dict):
            raise TaskOutputError(f"expected a JSON object, got {type(decoded).__name__}")
        try:
            return self.model.model_validate(decoded, strict=False)
        except ValidationError as error:
            details = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                for e in error.errors()[:5]
            )
            raise TaskOutputError(f"schema violation: {details}") from error

    # -- tables -------------------------------------------------------------------------------

    @cached_property
    def tables(self) -> TaskTables:
        scalars: list[tuple[str, str]] = []
        children: list[ChildTable] = []
        for name, info in self.model.model_fields.items():
            item = _list_item(info.annotation)
            if item is None:
                scalars.append((name, _column_type(info.annotation, f"{self.name}.{name}")))
                continue
            sub_columns = []
            for sub_name, sub_info in item.model_fields.items():
                if _list_item(sub_info.annotation) is not None:
                    raise TypeError(f"{self.name}.{name}.{sub_name}: nested lists not supported")
                sub_columns.append(
                    (sub_name, _column_type(sub_info.annotation, f"{self.name}.{name}.{sub_name}"))
                )
            children.append(ChildTable(name, f"task_{self.name}__{name}", tuple(sub_columns)))
        return TaskTables(f"task_{self.name}", tuple(scalars), tuple(children))

    def rows(
        self, image_id: str, model_id: str, parsed: dict[str, Any]
    ) -> dict[str, list[tuple[Any, ...]]]:
        """Flatten one validated output into rows per table, keyed as the DDL says."""
        key = (image_id, model_id, self.fingerprint)
        tables = self.tables
        out: dict[str, list[tuple[Any, ...]]] = {
            tables.table: [(*key, *(parsed.get(c) for c, _ in tables.columns))]
        }
        for child in tables.children:
            items = parsed.get(child.field) or []
            out[child.table] = [
                (*key, idx, *(item.get(c) for c, _ in child.columns))
                for idx, item in enumerate(items)
            ]
        return out


def _describe(schema: dict[str, Any], indent: str) -> list[str]:
    lines: list[str] = []
    for name, prop in schema.get("properties", {}).items():
        text = f"{indent}- {name}"
        nullable = False
        if "anyOf" in prop:  # `optional: true`: the value or null
            options = [o for o in prop["anyOf"] if o.get("type") != "null"]
            nullable = len(options) < len(prop["anyOf"])
            prop = {**options[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
        items = prop.get("items", {})
        if prop.get("type") == "array" and "enum" in items:
            low, high = prop.get("minItems", 0), prop["maxItems"]
            text += f": a list of {low} to {high} distinct values from " + ", ".join(
                json.dumps(v) for v in items["enum"]
            )
            if "enum" in prop:  # the grammar lists the sets, each in the values' order
                text += ", in the order listed"
            if prop.get("description"):
                text += f" ({prop['description']})"
            lines.append(text)
            continue
        if prop.get("type") == "array":
            items = prop.get("items", {})
            text += f": a list of at most {prop['maxItems']} objects"
            if prop.get("description"):
                text += f" ({prop['description']})"
            lines.append(text + ", each with:")
            lines += _describe(items, indent + "  ")
            continue
        if "enum" in prop:
            text += ": one of " + ", ".join(json.dumps(v) for v in prop["enum"])
        elif "const" in prop:
            text += f": exactly {json.dumps(prop['const'])}"
        elif "pattern" in prop:
            text += f": {prop.get('type', 'string')} matching {prop['pattern']}"
        elif prop.get("type") == "boolean":
            text += ": true or false"
        elif prop.get("type") in ("integer", "number") and "minimum" in prop:
            text += f": {prop['type']} from {prop['minimum']} to {prop['maximum']}"
        else:
            text += f": {prop.get('type', 'value')}"
        if nullable:
            text += ", or null"
        if prop.get("description"):
            text += f" ({prop['description']})"
        lines.append(text)
    return lines
