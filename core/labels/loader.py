"""Read a labeling spec file and report every problem at once, by file, line and field.

The file named by `IMAGE_PIPELINE_LABELS` (YAML; JSON is YAML too) or, unset, the bundled
`labels/default.yaml` at the repository's top level (outside `core/`, so no built-in task name
lives in the code; beside the user's own example specs). PyYAML's composed nodes keep each key's
line, so a pydantic error's location maps back to a line of the file. A spec that does not
validate raises `SpecError` before any image is sent and before any table is touched.
"""

from __future__ import annotations

import difflib
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from core.labels.spec import (
    ChoiceField,
    ConsistencyRule,
    EntitiesField,
    IntegerField,
    LabelsSpec,
    MultiChoiceField,
    NumberField,
    TaskSpec,
    TextField,
    YesNoField,
    ZeroShot,
)

__all__ = [
    "DEFAULT_SPEC_PATH",
    "ENV_VAR",
    "SpecError",
    "SpecProblem",
    "current_spec",
    "default_spec",
    "load_spec",
    "parse_spec",
    "spec_path",
]

ENV_VAR = "IMAGE_PIPELINE_LABELS"
DEFAULT_SPEC_PATH = Path(__file__).resolve().parents[2] / "labels" / "default.yaml"

# Keys users bring from JSON schema that the grammar cannot enforce: refused with the reason,
# never passed through (xgrammar accepts `uniqueItems`/`multipleOf` and then violates them).
_REFUSED: dict[str, str] = {
    "uniqueItems": "the grammar cannot enforce `uniqueItems` (it is accepted, then violated):"
    " use `kind: multi_choice`, whose values are checked distinct after decoding",
    "multipleOf": "the grammar cannot enforce `multipleOf`: use an `integer` range and scale it",
    "format": "the grammar does not enforce string formats: use `kind: text` with a `pattern`",
}
for _key in ("unique_items", "unique", "distinct"):
    _REFUSED[_key] = _REFUSED["uniqueItems"]
_REFUSED["multiple_of"] = _REFUSED["multipleOf"]
_JSON_SCHEMA_KEYS = {
    "enum": "values",
    "minimum": "min",
    "maximum": "max",
    "minItems": "min",
    "maxItems": "max",
    "maxLength": "max_length",
    "minLength": "min_length",
    "type": "kind",
    "properties": "fields",
    "items": "fields",
}

_FIELD_MODELS: dict[str, type[BaseModel]] = {
    "choice": ChoiceField,
    "multi_choice": MultiChoiceField,
    "yes_no": YesNoField,
    "integer": IntegerField,
    "number": NumberField,
    "text": TextField,
    "entities": EntitiesField,
}
_SCALAR_KINDS = ("choice", "yes_no", "integer", "number", "text")


@dataclass(frozen=True)
class SpecProblem:
    """One problem: where (line, column, the task/field it concerns) and what to do."""

    line: int | None
    column: int | None
    where: str  # e.g. "task product, field defects.severity"
    message: str

    def render(self, file: str) -> str:
        position = f"{file}:{self.line}:{self.column}" if self.line else file
        return (
            f"{position}: {self.where}: {self.message}"
            if self.where
            else f"{position}: {self.message}"
        )


class SpecError(ValueError):
    """The spec does not validate; `problems` lists every problem, one per line of the message."""

    def __init__(self, file: str, problems: list[SpecProblem]) -> None:
        self.file = file
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = [p.render(file) for p in problems]
        super().__init__(f"labeling spec {file} is invalid ({count}):\n" + "\n".join(lines))


# -- YAML with positions --------------------------------------------------------------------


@dataclass
class _Doc:
    data: Any
    marks: dict[tuple, tuple[int, int]]  # path -> (line, column), 1-based
    problems: list[SpecProblem]


def _compose(text: str) -> _Doc:
    """Build plain data from the YAML node tree, remembering where each key and item is."""
    loader = yaml.SafeLoader(text)
    marks: dict[tuple, tuple[int, int]] = {}
    problems: list[SpecProblem] = []
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        problem = getattr(error, "problem", None) or str(error)
        return _Doc(None, {}, [SpecProblem(line, column, "", f"not valid YAML/JSON: {problem}")])
    finally:
        loader.dispose()

    def at(n: yaml.Node) -> tuple[int, int]:
        return (n.start_mark.line + 1, n.start_mark.column + 1)

    def build(n: yaml.Node, path: tuple) -> Any:
        marks.setdefault(path, at(n))
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                key = loader.construct_object(key_node, deep=True)
                if isinstance(key, bool) and path[-2:-1] == ("values",):
                    out[key] = build(value_node, (*path, str(key)))  # reported by the model
                    continue
                if not isinstance(key, str | int) or isinstance(key, bool):
                    problems.append(SpecProblem(*at(key_node), _where(path), "keys must be text"))
                    continue
                key = str(key)
                if key in out:
                    problems.append(
                        SpecProblem(*at(key_node), _where(path), f"duplicate key {key!r}")
                    )
                    continue
                marks[(*path, key)] = at(key_node)
                out[key] = build(value_node, (*path, key))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(item, (*path, i)) for i, item in enumerate(n.value)]
        return loader.construct_object(n, deep=True)

    data = build(node, ()) if node is not None else None
    return _Doc(data, marks, problems)


# -- locations ------------------------------------------------------------------------------


def _has(node: Any, key: Any) -> bool:
    if isinstance(node, list):
        return isinstance(key, int) and 0 <= key < len(node)
    return isinstance(node, dict) and key in node


def _where(path: tuple, data: Any = None) -> str:
    """`task <name>, field <a>.<b>` for a path into the spec (names read from the data)."""
    if not path:
        return ""
    parts: list[str] = []
    node = data
    names: list[str] = []
    context = ""
    for i, key in enumerate(path):
        child = node[key] if _has(node, key) else None
        if isinstance(key, int):
            name = child.get("name") if isinstance(child, dict) else None
            label = str(name) if isinstance(name, str) else f"#{key + 1}"
            if context == "tasks":
                parts.append(f"task {label}")
            elif context == "fields":
                names.append(label)
            elif context == "consistency":
                parts.append(f"consistency rule {label}")
        elif (
            (i == len(path) - 1 or not isinstance(path[i + 1], int))
            and key not in ("tasks", "fields", "consistency")
            and not names
        ):
            parts.append(f"key {key!r}")
        context = key if isinstance(key, str) else context
        node = child
    if names:
        parts.append("field " + ".".join(names))
    return ", ".join(parts)


def _data_path(loc: tuple, data: Any) -> tuple:
    """A pydantic error location with discriminator tags dropped: a path into the data."""
    path: list[Any] = []
    node = data
    for key in loc:
        if _has(node, key):
            path.append(key)
            node = node[key]
        elif isinstance(node, dict) and key not in _FIELD_MODELS:
            path.append(key)  # a missing key: report at its parent's line
            node = None
    return tuple(path)


def _mark(doc: _Doc, path: tuple) -> tuple[int | None, int | None]:
    for end in range(len(path), -1, -1):
        if path[:end] in doc.marks:
            return doc.marks[path[:end]]
    return (None, None)


def _allowed_keys(path: tuple, data: Any) -> list[str]:
    """The keys the object at `path` may have (for 'unknown key' hints)."""
    node = data
    for key in path:
        node = node[key] if isinstance(node, dict | list) else None
    model: type[BaseModel] | None = None
    if len(path) == 0:
        model = LabelsSpec
    elif path[-2:-1] == ("tasks",):
        model = TaskSpec
    elif path[-2:-1] == ("consistency",):
        model = ConsistencyRule
    elif path[-1:] == ("zero_shot",):
        model = ZeroShot
    elif path[-2:-1] == ("fields",) and isinstance(node, dict):
        model = _FIELD_MODELS.get(str(node.get("kind")))
    if model is None:
        return []
    keys = [name for name, info in model.model_fields.items() if not info.exclude]
    return sorted(keys, key=lambda k: (k not in ("name", "kind"), k != "name"))


def _message(error: Any, path: tuple, data: Any) -> str:
    kind, message = error["type"], error["msg"]
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "extra_forbidden":
        key = path[-1]
        allowed = _allowed_keys(path[:-1], data)
        hint = difflib.get_close_matches(str(key), allowed, n=1)
        text = f"unknown key {key!r}"
        if str(key) in _JSON_SCHEMA_KEYS:
            text += f" (this is a labeling spec, not a JSON schema: use `{_JSON_SCHEMA_KEYS[str(key)]}`)"
        elif hint:
            text += f" (did you mean {hint[0]!r}?)"
        return text + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if kind == "union_tag_invalid":
        if list(path).count("fields") > 1:
            return f"an entity's fields are of the scalar kinds: {', '.join(_SCALAR_KINDS)}"
        return f"unknown kind: use one of {', '.join(_FIELD_MODELS)}"
    if kind == "union_tag_not_found":
        return f"needs `kind`: one of {', '.join(_FIELD_MODELS)}"
    if kind == "missing":
        return f"missing required key {path[-1]!r}"
    if kind == "string_pattern_mismatch" and path and path[-1] in ("name", "labelled_as"):
        return (
            f"{error.get('input')!r} is not a safe SQL name: lower-case letters, digits and single"
            " underscores, starting with a letter, at most 41 characters"
        )
    return message


def _unknown_keys(doc: _Doc, node: Any, path: tuple) -> None:
    """Report (and drop) unknown keys before validation: pydantic would stop at them and hide
    the object's other problems."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _unknown_keys(doc, item, (*path, i))
        return
    if not isinstance(node, dict):
        return
    if (
        not path
        or path[-2:-1] in (("tasks",), ("fields",), ("consistency",))
        or path[-1:] == ("zero_shot",)
    ):
        allowed = _allowed_keys(path, doc.data)
        for key in [k for k in node if allowed and k not in allowed]:
            line, column = _mark(doc, (*path, key))
            message = _message({"type": "extra_forbidden", "msg": ""}, (*path, key), doc.data)
            doc.problems.append(SpecProblem(line, column, _where(path, doc.data), message))
            del node[key]
    for key, value in node.items():
        if key in ("tasks", "fields", "consistency", "zero_shot"):
            _unknown_keys(doc, value, (*path, key))


def _refuse_constructs(doc: _Doc, node: Any, path: tuple) -> None:
    """Report (and drop) keys the grammar cannot enforce, so each is one clear error."""
    if isinstance(node, dict):
        for key in list(node):
            if key in _REFUSED:
                line, column = _mark(doc, (*path, key))
                doc.problems.append(
                    SpecProblem(line, column, _where((*path, key), doc.data), _REFUSED[key])
                )
                del node[key]
            else:
                _refuse_constructs(doc, node[key], (*path, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _refuse_constructs(doc, item, (*path, i))


# -- checks across fields and tasks ---------------------------------------------------------


@lru_cache(maxsize=1)
def _reserved_words() -> frozenset[str]:
    import duckdb

    with duckdb.connect() as conn:
        rows = conn.execute(
            "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category = 'reserved'"
        ).fetchall()
    return frozenset(row[0] for row in rows)


def _cross_checks(doc: _Doc) -> None:
    data = doc.data
    tasks = data.get("tasks") if isinstance(data.get("tasks"), list) else []

    def problem(path: tuple, message: str) -> None:
        doc.problems.append(SpecProblem(*_mark(doc, path), _where(path, data), message))

    def names_of(items: Any, path: tuple, what: str) -> None:
        if not isinstance(items, list):
            return
        named = [(i, item.get("name")) for i, item in enumerate(items) if isinstance(item, dict)]
        counts = Counter(name for _, name in named if isinstance(name, str))
        seen: set[str] = set()
        for i, name in named:
            if not isinstance(name, str):
                continue
            if name in _reserved_words():
                problem((*path, i, "name"), f"{name!r} is a reserved SQL word; choose another")
            if counts[name] > 1 and name in seen:
                problem((*path, i, "name"), f"duplicate {what} name {name!r}")
            seen.add(name)

    names_of(tasks, ("tasks",), "task")
    names_of(data.get("consistency"), ("consistency",), "consistency rule")
    labels: dict[str, tuple] = {}
    entity_lists: set[str] = set()
    seen_tasks: set[Any] = set()
    for t, task in enumerate(tasks):
        if not isinstance(task, dict):
            continue
        duplicate_task = task.get("name") in seen_tasks  # reported once, as a duplicate name
        seen_tasks.add(task.get("name"))
        fields = task.get("fields")
        names_of(fields, ("tasks", t, "fields"), "field")
        for f, field in enumerate(fields if isinstance(fields, list) else []):
            if not isinstance(field, dict):
                continue
            path = ("tasks", t, "fields", f)
            if field.get("kind") == "entities":
                names_of(field.get("fields"), (*path, "fields"), "field")
                if isinstance(task.get("name"), str) and isinstance(field.get("name"), str):
                    entity_lists.add(f"{task['name']}.{field['name']}")
                continue
            if field.get("kind") in ("choice", "multi_choice", "yes_no", "integer", "number"):
                label = field.get("labelled_as") or field.get("name")
                same_task = label in labels and labels[label][:2] == path[:2]
                if isinstance(label, str) and not duplicate_task:
                    if label in labels and not (same_task and not field.get("labelled_as")):
                        problem(
                            (*path, "labelled_as" if field.get("labelled_as") else "name"),
                            f"labelled field {label!r} is already declared at line "
                            f"{_mark(doc, labels[label])[0]}: set `labelled_as` to tell them apart",
                        )
                    labels.setdefault(label, path)
                zero_shot = field.get("zero_shot")
                if field.get("kind") == "choice" and isinstance(zero_shot, dict):
                    for key in ("threshold", "top_k"):
                        if key in zero_shot:
                            problem(
                                (*path, "zero_shot", key),
                                f"`{key}` is a multi_choice decision rule; a choice field takes"
                                " the best-scoring value",
                            )
    task_names = {t.get("name") for t in tasks if isinstance(t, dict)}
    rules = data.get("consistency")
    for r, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        if isinstance(rule.get("when_answered"), str) and rule["when_answered"] not in task_names:
            problem(("consistency", r, "when_answered"), f"no task {rule['when_answered']!r}")
        target = rule.get("expect_entities")
        if isinstance(target, str) and target not in entity_lists:
            problem(
                ("consistency", r, "expect_entities"),
                f"{target!r} is not an entities field (`task.field`); known: "
                f"{', '.join(sorted(entity_lists)) or 'none'}",
            )


# -- entry points ---------------------------------------------------------------------------


def parse_spec(text: str, file: str = "<spec>") -> LabelsSpec:
    """Validate spec text; raises `SpecError` listing every problem found."""
    doc = _compose(text)
    if doc.problems and doc.data is None:
        raise SpecError(file, doc.problems)
    if not isinstance(doc.data, dict):
        raise SpecError(
            file, [SpecProblem(1, 1, "", "the spec is a mapping with `tasks:` (a list of tasks)")]
        )
    _refuse_constructs(doc, doc.data, ())
    _unknown_keys(doc, doc.data, ())
    _cross_checks(doc)
    data = doc.data
    spec: LabelsSpec | None = None
    try:
        spec = LabelsSpec.model_validate(data)
    except ValidationError as error:
        for e in error.errors():
            path = _data_path(tuple(e["loc"]), data)
            doc.problems.append(
                SpecProblem(*_mark(doc, path), _where(path, data), _message(e, path, data))
            )
    if spec is not None and not doc.problems:
        _derivation_checks(spec, doc)
    if doc.problems:
        doc.problems.sort(key=lambda p: (p.line or 0, p.column or 0))
        raise SpecError(file, doc.problems)
    assert spec is not None
    return spec


def _derivation_checks(spec: LabelsSpec, doc: _Doc) -> None:
    """Build every task: what the derivation refuses (an unbounded schema) is a spec error too."""
    from core.labels.derive import build_task

    for t, task in enumerate(spec.tasks):
        try:
            build_task(task)
        except (TypeError, ValueError) as error:
            path = ("tasks", t)
            doc.problems.append(SpecProblem(*_mark(doc, path), _where(path, doc.data), str(error)))


def load_spec(path: str | os.PathLike[str]) -> LabelsSpec:
    """Read and validate a spec file (YAML or JSON); `SpecError` names file, line and field."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(str(file), [SpecProblem(None, None, "", f"cannot read: {error}")]) from None
    return parse_spec(text, str(file))


def spec_path(environ: Mapping[str, str] | None = None) -> Path:
    """The spec in use: `IMAGE_PIPELINE_LABELS` (relative to the working directory) or the
    bundled default."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    return Path(value) if value else DEFAULT_SPEC_PATH


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> LabelsSpec:
    return load_spec(path)


def _load(path: Path) -> LabelsSpec:
    try:
        stat = path.stat()
    except OSError:
        return load_spec(path)  # raises SpecError saying it cannot be read
    return _load_cached(str(path), stat.st_mtime_ns, stat.st_size)


def current_spec() -> LabelsSpec:
    """The spec `IMAGE_PIPELINE_LABELS` names (re-read when the file changes)."""
    return _load(spec_path())


def default_spec() -> LabelsSpec:
    """The bundled spec: the built-in tasks."""
    return _load(DEFAULT_SPEC_PATH)
