"""The labeling spec: what a user asks of each image, as data (YAML or JSON).

A spec is a list of tasks; a task is a name, a goal (the prompt's first line), a token budget
and a list of fields. Every field has a `kind`:

- `choice`: one value of `values` (optionally `ordinal`, optionally a `cannot_tell` value);
- `multi_choice`: a set of distinct values of `values`, between `min` and `max` of them;
- `yes_no`: true or false;
- `integer` / `number`: a value within `min`..`max`;
- `text`: free text of at most `max_length` characters (or a user `pattern`, bounded);
- `entities`: a list of at most `max` objects whose `fields` are of the scalar kinds above.

A choice or multi-choice value may carry a CLIP phrase (`- value: phrase`): a field whose values
all have one gets a zero-shot label set. These models check structure and each field on its own;
checks across fields and tasks live in `core.labels.loader`, which also turns every problem into
an error naming file, line and field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "GENERIC_TEMPLATES",
    "NAME_PATTERN",
    "RESERVED_COLUMNS",
    "ChoiceField",
    "ConsistencyRule",
    "EntitiesField",
    "FieldSpec",
    "IntegerField",
    "LabelsSpec",
    "MultiChoiceField",
    "NumberField",
    "ReviewSpec",
    "ScalarFieldSpec",
    "TaskSpec",
    "TextField",
    "YesNoField",
    "ZeroShot",
]

# Task and field names become table and column names: lower-case SQL identifiers, short enough
# that `task_<task>__<field>` stays readable.
# No double or trailing underscore: `task_<a>__<b>` must name one child table only.
NAME_PATTERN = r"[a-z](?:_?[a-z0-9]){0,40}"
# Key columns every task table has: a field may not shadow them.
RESERVED_COLUMNS = frozenset({"image_id", "model_id", "task_fingerprint", "idx"})
GENERIC_TEMPLATES: tuple[str, ...] = ("a photo of {}.", "a picture of {}.", "an image of {}.")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Pattern pieces that can match a control character, a quote or a backslash (which would break
# the JSON string the grammar emits), or that xgrammar reads differently from Python.
_UNSAFE_PATTERN = re.compile(r'(?<!\\)\.|\[\^|\\[sSWDxunrtfv0bB]|"|\\\\|\(\?')
_UNBOUNDED = re.compile(r"(?<!\\)[*+]|\{\d+,\}")


class _Strict(BaseModel):
    """Unknown keys are an error, never ignored: a typo must not silently change the labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _normalised(value: str) -> str:
    """Values equal after this collide: a person (or a model) could not tell them apart."""
    return re.sub(r"[\W_]+", "", value.casefold())


def _parse_values(raw: Any) -> tuple[tuple[str, ...], dict[str, str]]:
    """`values` items are `value` or `{value: phrase}`; returns the values and the phrases."""
    if not isinstance(raw, list):
        raise ValueError("must be a list of values, each `value` or `value: CLIP phrase`")
    values: list[str] = []
    phrases: dict[str, str] = {}
    for item in raw:
        if isinstance(item, bool) or (
            isinstance(item, dict) and any(isinstance(k, bool) for k in item)
        ):
            raise ValueError(
                "YAML reads unquoted yes/no/on/off/true/false as true or false: quote the value,"
                ' e.g. "yes" (or use `kind: yes_no`)'
            )
        if isinstance(item, dict) and len(item) == 1:
            ((value, phrase),) = item.items()
            if not isinstance(phrase, str) or not phrase.strip():
                raise ValueError(f"the CLIP phrase of {value!r} must be non-empty text")
            phrases[str(value)] = phrase
            values.append(str(value))
        elif isinstance(item, str | int | float) and not isinstance(item, bool):
            values.append(str(item))
        else:
            raise ValueError(f"{item!r}: each value is `value` or `value: CLIP phrase`")
    return tuple(values), phrases


def _check_values(values: tuple[str, ...], extra: str | None = None) -> None:
    if len(values) < 2:
        raise ValueError("needs at least two values")
    seen: dict[str, str] = {}
    for value in (*values, *([extra] if extra else [])):
        if not value or len(value) > 64 or _CONTROL.search(value) or "|" in value:
            raise ValueError(
                f"value {value!r} must be 1 to 64 characters, no control characters and no `|`"
                " (a labels CSV separates multi-label values with `|`)"
            )
        if value != value.strip():
            raise ValueError(f"value {value!r} has leading or trailing spaces")
        key = _normalised(value) or value
        if key in seen:
            raise ValueError(
                f"values {seen[key]!r} and {value!r} collide (equal ignoring case, spaces and"
                " punctuation)"
            )
        seen[key] = value


class ZeroShot(_Strict):
    """How CLIP zero-shot reads a choice field whose values have phrases."""

    templates: tuple[str, ...] = GENERIC_TEMPLATES
    # Compare the CLIP label with the VLM answer (agreement check, review queue). Off for a
    # question that only makes sense on some images (the task's goal presumes what it asks).
    agreement: bool = True
    # multi_choice only: the decision rule turning per-value scores into a set (one of them).
    threshold: float | None = Field(default=None, gt=0, lt=1)
    top_k: int | None = Field(default=None, ge=1)

    @field_validator("templates")
    @classmethod
    def _placeholder(cls, templates: tuple[str, ...]) -> tuple[str, ...]:
        if not templates:
            raise ValueError("needs at least one template")
        for template in templates:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} needs exactly one {{}} placeholder")
        return templates

    @model_validator(mode="after")
    def _one_rule(self) -> ZeroShot:
        if self.threshold is not None and self.top_k is not None:
            raise ValueError("give `threshold` or `top_k`, not both")
        return self


class _FieldBase(_Strict):
    name: str = Field(pattern=f"^{NAME_PATTERN}$")
    description: str | None = Field(default=None, max_length=300)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_COLUMNS:
            raise ValueError(f"{name!r} is a key column of every task table; choose another name")
        return name

    @field_validator("description")
    @classmethod
    def _printable(cls, text: str | None) -> str | None:
        if text is not None and _CONTROL.search(text):
            raise ValueError("must be one line without control characters")
        return text


class _Optional(BaseModel):
    # null is a valid answer ("not visible", "cannot tell"); the column is nullable anyway.
    optional: bool = False


class _Choices(_FieldBase):
    values: tuple[str, ...]
    phrases: dict[str, str] = Field(default_factory=dict, exclude=True)
    # The name labelled sets, CLIP zero-shot and evaluation know this field by (default: name).
    labelled_as: str | None = Field(default=None, pattern=f"^{NAME_PATTERN}$")
    zero_shot: ZeroShot | None = None

    @model_validator(mode="before")
    @classmethod
    def _split_phrases(cls, data: Any) -> Any:
        if isinstance(data, dict) and "phrases" in data:
            raise ValueError("write CLIP phrases inline: `values: [- value: phrase, ...]`")
        if isinstance(data, dict) and "values" in data:
            values, phrases = _parse_values(data["values"])
            data = {**data, "values": values, "phrases": phrases}
        return data

    @model_validator(mode="after")
    def _phrases(self) -> _Choices:
        if self.phrases and set(self.phrases) != set(self.values):
            missing = [v for v in self.values if v not in self.phrases]
            raise ValueError(
                f"values {missing} have no CLIP phrase: give every value a phrase, or none"
            )
        if self.zero_shot is not None and not self.phrases:
            raise ValueError("`zero_shot` needs a CLIP phrase for every value (`- value: phrase`)")
        return self

    @property
    def label_name(self) -> str:
        return self.labelled_as or self.name

    @property
    def has_label_set(self) -> bool:
        return bool(self.phrases)


class ChoiceField(_Choices, _Optional):
    kind: Literal["choice"]
    ordinal: bool = False  # values are ordered bins: adjacent values are neighbours
    # An extra allowed answer meaning "the image does not show it" (`true`: "cannot_tell").
    cannot_tell: str | None = None

    @field_validator("cannot_tell", mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        if value is True:
            return "cannot_tell"
        if value is False:
            return None
        return value

    @model_validator(mode="after")
    def _distinct(self) -> ChoiceField:
        _check_values(self.values, self.cannot_tell)
        return self

    @property
    def allowed(self) -> tuple[str, ...]:
        """Every value the answer may hold: the declared values, then `cannot_tell`."""
        return (*self.values, *([self.cannot_tell] if self.cannot_tell else []))


class MultiChoiceField(_Choices):
    kind: Literal["multi_choice"]
    min: int = Field(default=0, ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> MultiChoiceField:
        _check_values(self.values)
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max})")
        if self.max > len(self.values):
            raise ValueError(
                f"max ({self.max}) exceeds the {len(self.values)} values: values are distinct"
            )
        return self

    @property
    def allowed(self) -> tuple[str, ...]:
        return self.values


class YesNoField(_FieldBase, _Optional):
    kind: Literal["yes_no"]


class IntegerField(_FieldBase, _Optional):
    kind: Literal["integer"]
    min: int
    max: int

    @model_validator(mode="after")
    def _range(self) -> IntegerField:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max})")
        return self


class NumberField(_FieldBase, _Optional):
    kind: Literal["number"]
    min: float
    max: float

    @model_validator(mode="after")
    def _range(self) -> NumberField:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max})")
        return self


class TextField(_FieldBase, _Optional):
    """Free text, bounded: `max_length` (a pattern of printable characters without quotes or
    backslashes is derived from it) or a user `pattern` with bounded quantifiers only."""

    kind: Literal["text"]
    max_length: int | None = Field(default=None, ge=1, le=2000)
    min_length: int = Field(default=0, ge=0)
    pattern: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _bounded(self) -> TextField:
        if (self.max_length is None) == (self.pattern is None):
            raise ValueError("free text needs `max_length` or a `pattern` (one of them)")
        if self.max_length is not None and self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) exceeds max_length")
        if self.pattern is not None:
            if self.min_length:
                raise ValueError("`min_length` goes with `max_length`; write it into the pattern")
            _check_pattern(self.pattern)
        return self

    @property
    def json_pattern(self) -> str:
        """The anchored, bounded pattern the schema carries (the grammar enforces it)."""
        if self.pattern is not None:
            return self.pattern
        return rf'^[^\x00-\x1f\x7f"\\]{{{self.min_length},{self.max_length}}}$'


def _check_pattern(pattern: str) -> None:
    if not (pattern.startswith("^") and pattern.endswith("$")):
        raise ValueError(f"pattern {pattern!r} must be anchored with ^...$")
    if _UNBOUNDED.search(pattern):
        raise ValueError(
            f"pattern {pattern!r} has an unbounded quantifier (*, + or {{n,}}): use {{0,N}}"
        )
    if _UNSAFE_PATTERN.search(pattern) or _CONTROL.search(pattern):
        raise ValueError(
            f"pattern {pattern!r} may match control characters, quotes or backslashes, or uses a"
            " construct the grammar reads differently (., [^...], \\s, \\S, \\W, \\D, escapes,"
            " groups with ?): list the allowed characters, e.g. [a-z0-9 -]"
        )
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"pattern {pattern!r} is not a regular expression: {error}") from None


ScalarFieldSpec = Annotated[
    ChoiceField | YesNoField | IntegerField | NumberField | TextField,
    Field(discriminator="kind"),
]


class EntitiesField(_FieldBase):
    """A list of objects (`task_<task>__<name>` rows, one per item, in the model's order)."""

    kind: Literal["entities"]
    min: int = Field(default=0, ge=0)
    max: int = Field(ge=1, le=100)
    fields: tuple[ScalarFieldSpec, ...]

    @model_validator(mode="after")
    def _check(self) -> EntitiesField:
        if not self.fields:
            raise ValueError("needs at least one field")
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max})")
        for sub in self.fields:
            if isinstance(sub, ChoiceField) and (sub.phrases or sub.labelled_as):
                raise ValueError(
                    f"{sub.name}: CLIP phrases and `labelled_as` are for top-level fields"
                    " (zero-shot scores the whole image, not one entity)"
                )
        return self


FieldSpec = Annotated[
    ChoiceField
    | MultiChoiceField
    | YesNoField
    | IntegerField
    | NumberField
    | TextField
    | EntitiesField,
    Field(discriminator="kind"),
]


class TaskSpec(_Strict):
    name: str = Field(pattern=f"^{NAME_PATTERN}$")
    goal: str = Field(min_length=1, max_length=2000)
    max_completion_tokens: int = Field(default=256, ge=1, le=32768)
    fields: tuple[FieldSpec, ...]

    @field_validator("fields")
    @classmethod
    def _some_fields(cls, fields: tuple[Any, ...]) -> tuple[Any, ...]:
        # Checked here, not with `min_length`: pydantic would also report an empty tuple when
        # one of its items is invalid, a second error for one problem.
        if not fields:
            raise ValueError("needs at least one field")
        return fields

    def field(self, name: str) -> Any:
        for field in self.fields:
            if field.name == name:
                return field
        raise KeyError(f"task {self.name!r} has no field {name!r}")


class ConsistencyRule(_Strict):
    """Images where task `when_answered` gave a valid answer but the entity list
    `expect_entities` (`task.field`) is empty: one of the two answers is wrong."""

    name: str = Field(pattern=f"^{NAME_PATTERN}$")
    when_answered: str = Field(pattern=f"^{NAME_PATTERN}$")
    expect_entities: str = Field(pattern=rf"^{NAME_PATTERN}\.{NAME_PATTERN}$")
    max_share: float = Field(default=0.25, ge=0, le=1)


class ReviewSpec(_Strict):
    """How the review queue treats the VLM's answers (not part of any task's fingerprint)."""

    # A labelled field's confidence (core/vlm/confidence.py) below this raises the queue's
    # `low_confidence` signal; the extraction asset reports the share below it per field.
    low_confidence_below: float = Field(default=0.5, gt=0, le=1)


class LabelsSpec(_Strict):
    version: Literal[1] = 1
    tasks: tuple[TaskSpec, ...]
    consistency: tuple[ConsistencyRule, ...] = ()
    review: ReviewSpec = ReviewSpec()

    @field_validator("tasks")
    @classmethod
    def _some_tasks(cls, tasks: tuple[TaskSpec, ...]) -> tuple[TaskSpec, ...]:
        if not tasks:
            raise ValueError("needs at least one task")
        return tasks

    def task(self, name: str) -> TaskSpec:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"unknown task {name!r}; known: {', '.join(t.name for t in self.tasks)}")
