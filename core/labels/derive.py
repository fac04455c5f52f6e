"""From a spec to what the pipeline runs: `Task`s (schema, prompt, validation, tables) and label sets.

Each task's pydantic model is built with `pydantic.create_model` from its fields, so the JSON
schema, the prompt and the fingerprint come from the same machinery as before (`core.tasks.base`)
and the bundled spec reproduces the built-in tasks byte for byte. Per kind:

- `choice`: `Literal[values (, cannot_tell)]` -> `enum`; VARCHAR column;
- `multi_choice`: `list[Literal[values]]` with min/max -> array of enum with `minItems`/`maxItems`;
  VARCHAR[] column. xgrammar ignores `uniqueItems`, so when the field has at most
  `MAX_GRAMMAR_SUBSETS` allowed sets, the array schema also carries an `enum` of every set of
  distinct values in the spec's order (`["a"]`, `["a","b"]`, ...): the grammar can then produce
  only valid sets. Above that, and always as the safety net, validation refuses a repeated value
  (a schema violation, i.e. an `invalid` result, never stored). Valid sets are stored in the
  spec's value order;
- `yes_no`: bool -> BOOLEAN; `integer`/`number`: range -> BIGINT/DOUBLE;
- `text`: a bounded anchored `pattern` -> VARCHAR;
- `entities`: `list[sub-model]` with `maxItems` -> child table `task_<task>__<field>`;
- `optional: true`: `X | None` (null allowed; the key stays required, objects stay closed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations
from math import comb
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, GetJsonSchemaHandler, create_model
from pydantic_core import CoreSchema

from core.labels.label_set import LabelSet
from core.labels.spec import (
    ChoiceField,
    EntitiesField,
    IntegerField,
    LabelsSpec,
    MultiChoiceField,
    NumberField,
    TaskSpec,
    TextField,
    YesNoField,
)
from core.tasks.base import Task, TaskModel

__all__ = [
    "MAX_GRAMMAR_SUBSETS",
    "FieldColumn",
    "build_label_sets",
    "build_task",
    "build_tasks",
    "field_columns",
    "model_name",
]


log = logging.getLogger(__name__)

# The most sets a multi-choice field may allow for its grammar to list them all (an `enum` of
# arrays); 8 values with any count give 256. Above it the grammar bounds only the values and
# the count, and validation alone refuses a repeated value.
MAX_GRAMMAR_SUBSETS = 256


def subset_count(field: MultiChoiceField) -> int:
    """How many sets of distinct values the field allows (sizes `min` to `max`)."""
    n = len(field.values)
    return sum(comb(n, k) for k in range(field.min, min(field.max, n) + 1))


def grammar_subsets(field: MultiChoiceField) -> list[list[str]] | None:
    """Every allowed set, each in the spec's value order, smallest first; None above the limit."""
    if subset_count(field) > MAX_GRAMMAR_SUBSETS:
        return None
    return [
        list(chosen)
        for k in range(field.min, min(field.max, len(field.values)) + 1)
        for chosen in combinations(field.values, k)
    ]


@dataclass(frozen=True)
class _EnumOfSets:
    """Adds `enum: [sets]` to a list's JSON schema, next to its `items`/`minItems`/`maxItems`
    (which the prompt, Label Studio and search still read)."""

    sets: tuple[tuple[str, ...], ...]

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        schema = handler(core_schema)
        schema["enum"] = [list(s) for s in self.sets]
        return schema


def model_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _distinct_in_order(values: tuple[str, ...]):
    order = {value: i for i, value in enumerate(values)}

    def check(items: list[str]) -> list[str]:
        seen: set[str] = set()
        for item in items:
            if item in seen:
                raise ValueError(f"repeated value {item!r}: the values of a set must be distinct")
            seen.add(item)
        return sorted(items, key=order.__getitem__)

    return check


def _annotation(field: Any, owner: str) -> tuple[Any, Any]:
    """(annotation, FieldInfo) of one field, as a hand-written task model would declare it."""
    description = field.description
    extra: dict[str, Any] = {}
    if isinstance(field, ChoiceField):
        annotation: Any = Literal[field.allowed]  # type: ignore[valid-type]
        if field.cannot_tell:
            hint = f'"{field.cannot_tell}" when the image does not show it'
            description = f"{description}; {hint}" if description else hint
    elif isinstance(field, MultiChoiceField):
        item = Literal[field.values]  # type: ignore[valid-type]
        annotation = Annotated[list[item], AfterValidator(_distinct_in_order(field.values))]
        sets = grammar_subsets(field)
        if sets is not None:
            annotation = Annotated[annotation, _EnumOfSets(tuple(tuple(s) for s in sets))]
        else:
            log.warning(
                "%s.%s allows %d sets (over %d): the grammar does not list them, so a repeated "
                "value is refused by validation only",
                owner,
                field.name,
                subset_count(field),
                MAX_GRAMMAR_SUBSETS,
            )
        extra["max_length"] = field.max
        if field.min:
            extra["min_length"] = field.min
    elif isinstance(field, YesNoField):
        annotation = bool
    elif isinstance(field, IntegerField):
        annotation = int
        extra |= {"ge": field.min, "le": field.max}
    elif isinstance(field, NumberField):
        annotation = float
        extra |= {"ge": field.min, "le": field.max}
    elif isinstance(field, TextField):
        annotation = str
        extra["pattern"] = field.json_pattern
    elif isinstance(field, EntitiesField):
        sub = create_model(  # type: ignore[call-overload]
            model_name(f"{owner}_{field.name}"),
            __base__=TaskModel,
            **{s.name: _annotation(s, f"{owner}_{field.name}") for s in field.fields},
        )
        annotation = list[sub]
        extra["max_length"] = field.max
        if field.min:
            extra["min_length"] = field.min
    else:  # pragma: no cover - the spec's union is closed
        raise TypeError(f"unknown field kind {type(field).__name__}")
    if getattr(field, "optional", False):
        annotation = annotation | None
    return annotation, Field(description=description, **extra)


def build_task(spec: TaskSpec) -> Task:
    """The `Task` a task spec describes (raises TypeError/ValueError for what it cannot bound)."""
    model = create_model(  # type: ignore[call-overload]
        model_name(spec.name),
        __base__=TaskModel,
        **{field.name: _annotation(field, spec.name) for field in spec.fields},
    )
    return Task(
        name=spec.name,
        goal=spec.goal,
        model=model,
        max_completion_tokens=spec.max_completion_tokens,
        spec=spec,
    )


def build_tasks(spec: LabelsSpec) -> dict[str, Task]:
    return {task.name: build_task(task) for task in spec.tasks}


def build_label_sets(spec: LabelsSpec) -> dict[str, LabelSet]:
    """A label set per top-level choice field whose values have CLIP phrases, named by the
    field's `labelled_as` (default: its name)."""
    sets: dict[str, LabelSet] = {}
    for task in spec.tasks:
        for field in task.fields:
            if not isinstance(field, ChoiceField | MultiChoiceField) or not field.phrases:
                continue
            zero_shot = field.zero_shot
            multi = isinstance(field, MultiChoiceField)
            kwargs: dict[str, Any] = {}
            if zero_shot is not None:
                kwargs["templates"] = zero_shot.templates
                if multi:
                    kwargs |= {"threshold": zero_shot.threshold, "top_k": zero_shot.top_k}
            if isinstance(field, MultiChoiceField):
                kwargs |= {"min_items": field.min, "max_items": field.max}
            sets[field.label_name] = LabelSet(
                name=field.label_name,
                phrases={value: field.phrases[value] for value in field.values},
                multi_label=multi,
                **kwargs,
            )
    return sets


@dataclass(frozen=True)
class FieldColumn:
    """Where one spec field's answers are stored: `table`.`column` of type `duck_type`."""

    table: str  # task_<task>, or task_<task>__<entities> for an entity's field
    column: str
    duck_type: str  # VARCHAR, VARCHAR[], BOOLEAN, BIGINT, DOUBLE
    field: Any  # the spec field (ChoiceField, MultiChoiceField, ...): kind, values, bounds
    entities: str | None = None  # the entity list's field name, for a child table's column


def field_columns(task: Task) -> list[FieldColumn]:
    """Every stored field of a spec-built task, in spec order, with its table and column type."""
    if task.spec is None:
        raise ValueError(f"task {task.name!r} was not built from a labeling spec")
    tables = task.tables
    types = dict(tables.columns)
    children = {child.field: child for child in tables.children}
    out: list[FieldColumn] = []
    for field in task.spec.fields:
        if isinstance(field, EntitiesField):
            child = children[field.name]
            sub_types = dict(child.columns)
            out += [
                FieldColumn(child.table, sub.name, sub_types[sub.name], sub, field.name)
                for sub in field.fields
            ]
        else:
            out.append(FieldColumn(tables.table, field.name, types[field.name], field))
    return out
