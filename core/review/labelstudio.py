"""Label Studio's formats: the labeling config, tasks to import, and reading its JSON export back.

Everything is derived from the tasks of the labeling spec (their JSON schemas), so a new task
or field needs no code here. Every field is one control named `<task>__<field>`:

- single choice: `<Choices choice="single">` with one `<Choice>` per allowed value;
- multiple choice: `<Choices choice="multiple">`; the import checks the values are distinct and
  their count within the field's min and max, and stores them sorted, joined with `|`;
- yes/no: `<Choices>` of `yes` and `no`, stored as `true` / `false` (the task table's BOOLEAN);
- integer and number: `<Number>` with the field's `min` and `max` (`step="any"` for a number);
- text: a one-line `<TextArea maxSubmissions="1">`, checked against the field's bounded pattern;
- a list of entities has no boxes in our schema, so we do not invent regions: it becomes
  per-item fields. `<task>__<list>__count` (a `<Number>`, 0 to `maxItems`) says how many items
  there are, then `<task>__<list>__<i>__<sub>` for each slot i below `maxItems`, in the model's
  order. Item slots at or past the count are ignored on import.

An optional field (null allowed) gets the control of its kind; left empty, it gives no label.

Tasks follow Label Studio's JSON import format (`[{"data": {...}, "predictions": [...]}]`); the
VLM's answer is a prediction whose `model_version` is its model id, so the reviewer starts from
it. The export read back is Label Studio's "JSON" export: a list of tasks, each with its `data`
(ours, with the `pipeline` marker and `image_id`) and `annotations` (each with `result`,
`completed_by`, `updated_at`, `was_cancelled`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from xml.sax.saxutils import quoteattr

from core.tasks.base import Task

PIPELINE_MARK = "image-labeling-pipeline/review-v1"
IMAGE_OBJECT = "image"
REASONS_OBJECT = "reasons"
MAX_ERRORS_SHOWN = 5

ControlKind = Literal["choices", "textarea", "number"]


class ReviewImportError(ValueError):
    """A file that is not this pipeline's Label Studio export, or is damaged; nothing was written."""


@dataclass(frozen=True)
class Control:
    """One Label Studio control and the `human_labels` (task, field) it fills."""

    name: str
    task: str
    field: str  # '<field>', '<list>.count', '<list>[0].<field>'
    kind: ControlKind
    choices: tuple[str, ...] = ()
    multiple: bool = False  # a multi-choice field: a set of `choices`
    boolean: bool = False  # a yes/no field: choices ('yes', 'no') stored as 'true' / 'false'
    integer: bool = True  # a number control that takes whole numbers only
    min_items: int | None = None  # multi-choice bounds of the set's size
    max_items: int | None = None
    pattern: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    list_field: str | None = None  # the entity list, for the count and the item fields
    index: int | None = None  # the item slot, for item fields

    def check(self, value: Any) -> str:
        """The value as stored in `human_labels`; raises ValueError when the schema forbids it."""
        if self.kind == "choices" and self.multiple:
            chosen = [str(v) for v in value]
            outside = [v for v in chosen if v not in self.choices]
            if outside:
                raise ValueError(f"{outside} are not among {list(self.choices)}")
            if len(set(chosen)) != len(chosen):
                raise ValueError(f"{chosen} repeats a value")
            if (self.min_items is not None and len(chosen) < self.min_items) or (
                self.max_items is not None and len(chosen) > self.max_items
            ):
                raise ValueError(
                    f"{len(chosen)} values, expected {self.min_items} to {self.max_items}"
                )
            return "|".join(sorted(chosen))
        if self.kind == "choices":
            if str(value) not in self.choices:
                raise ValueError(f"{value!r} is not one of {list(self.choices)}")
            if self.boolean:
                return "true" if value == "yes" else "false"
            return str(value)
        if self.kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{value!r} is not a number")
            if self.integer and not float(value).is_integer():
                raise ValueError(f"{value} is not a whole number")
            if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum
            ):
                raise ValueError(f"{value} is outside [{self.minimum}, {self.maximum}]")
            return str(int(value)) if float(value).is_integer() else str(value)
        text = str(value).strip()
        if self.pattern and not re.fullmatch(self.pattern, text):
            raise ValueError(f"{text!r} does not match {self.pattern}")
        return text


def _non_null(prop: dict[str, Any]) -> dict[str, Any]:
    """An optional field's schema (`anyOf` with null) without its null branch."""
    branches = [b for b in prop.get("anyOf", ()) if b.get("type") != "null"]
    return branches[0] if len(branches) == 1 else prop


def _is_entities(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "array" and prop.get("items", {}).get("type") == "object"


def _scalar_control(task: str, name: str, field: str, prop: dict[str, Any], **extra) -> Control:
    prop = _non_null(prop)
    if prop.get("type") == "array":  # multi-choice: a set of enum values
        return Control(
            name,
            task,
            field,
            "choices",
            tuple(str(v) for v in prop["items"]["enum"]),
            multiple=True,
            min_items=prop.get("minItems"),
            max_items=prop.get("maxItems"),
            **extra,
        )
    if "enum" in prop:
        return Control(name, task, field, "choices", tuple(str(v) for v in prop["enum"]), **extra)
    if prop.get("type") == "boolean":
        return Control(name, task, field, "choices", ("yes", "no"), boolean=True, **extra)
    if prop.get("type") in ("integer", "number"):
        return Control(
            name,
            task,
            field,
            "number",
            integer=prop.get("type") == "integer",
            minimum=prop.get("minimum"),
            maximum=prop.get("maximum"),
            **extra,
        )
    return Control(name, task, field, "textarea", pattern=prop.get("pattern"), **extra)


def controls(task: Task) -> list[Control]:
    """The task's controls, in schema order."""
    out: list[Control] = []
    for name, prop in task.json_schema.get("properties", {}).items():
        if not _is_entities(_non_null(prop)):
            out.append(_scalar_control(task.name, f"{task.name}__{name}", name, prop))
            continue
        prop = _non_null(prop)
        slots = int(prop["maxItems"])
        out.append(
            Control(
                f"{task.name}__{name}__count",
                task.name,
                f"{name}.count",
                "number",
                minimum=prop.get("minItems", 0),
                maximum=slots,
                list_field=name,
            )
        )
        for index in range(slots):
            for sub, sub_prop in prop["items"].get("properties", {}).items():
                out.append(
                    _scalar_control(
                        task.name,
                        f"{task.name}__{name}__{index}__{sub}",
                        f"{name}[{index}].{sub}",
                        sub_prop,
                        list_field=name,
                        index=index,
                    )
                )
    return out


def control_map(tasks: Iterable[Task]) -> dict[str, Control]:
    return {control.name: control for task in tasks for control in controls(task)}


def _control_xml(control: Control, indent: str) -> list[str]:
    name, to = quoteattr(control.name), quoteattr(IMAGE_OBJECT)
    if control.kind == "choices":
        choice = "multiple" if control.multiple else "single"
        lines = [f'{indent}<Choices name={name} toName={to} choice="{choice}" showInline="true">']
        lines += [f"{indent}  <Choice value={quoteattr(v)}/>" for v in control.choices]
        return [*lines, f"{indent}</Choices>"]
    if control.kind == "number":
        bounds = "".join(
            f" {key}={quoteattr(str(int(v)) if float(v).is_integer() else str(v))}"
            for key, v in (("min", control.minimum), ("max", control.maximum))
            if v is not None
        )
        step = "" if control.integer else ' step="any"'
        return [f"{indent}<Number name={name} toName={to}{bounds}{step}/>"]
    return [
        f'{indent}<TextArea name={name} toName={to} maxSubmissions="1" editable="true" rows="1"/>'
    ]


def labeling_config(tasks: Sequence[Task]) -> str:
    """The project's labeling config (XML) for these tasks: one image, every field of each task."""
    lines = [
        "<View>",
        '  <Header value="Why this image is in the review queue"/>',
        f'  <Text name={quoteattr(REASONS_OBJECT)} value="$reasons"/>',
        f'  <Image name={quoteattr(IMAGE_OBJECT)} value="$image" zoom="true"/>',
    ]
    for task in tasks:
        lines.append(f"  <Header value={quoteattr(task.name)}/>")
        slot = None
        for control in controls(task):
            if control.index is not None and control.index != slot:
                if slot is not None:
                    lines.append("  </View>")
                slot = control.index
                lines.append('  <View style="padding-left: 1em">')
                label = f"{control.list_field}[{control.index}]"
                lines.append(f'    <Header value={quoteattr(label)} size="6"/>')
            elif control.index is None and slot is not None:
                lines.append("  </View>")
                slot = None
            if control.list_field and control.index is None:
                lines.append(
                    f"  <Header value={quoteattr(f'{control.list_field}: how many, then each')}"
                    ' size="5"/>'
                )
            lines += _control_xml(control, "    " if control.index is not None else "  ")
        if slot is not None:
            lines.append("  </View>")
    lines.append("</View>")
    return "\n".join(lines) + "\n"


def _result(control: Control, value: Any) -> dict[str, Any]:
    base = {"from_name": control.name, "to_name": IMAGE_OBJECT, "type": control.kind}
    if control.kind == "choices" and control.multiple:
        return base | {"value": {"choices": [str(v) for v in value]}}
    if control.kind == "choices":
        label = ("yes" if value else "no") if isinstance(value, bool) else str(value)
        return base | {"value": {"choices": [label]}}
    if control.kind == "number":
        return base | {"value": {"number": value}}
    return base | {"value": {"text": [str(value)]}}


def prediction_results(task: Task, parsed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A validated answer of the task as Label Studio result items (the prefilled prediction)."""
    by_field = {control.field: control for control in controls(task)}
    results = []
    for name, value in parsed.items():
        if isinstance(value, list) and f"{name}.count" in by_field:
            results.append(_result(by_field[f"{name}.count"], len(value)))
            for index, item in enumerate(value):
                for sub, sub_value in item.items():
                    control = by_field.get(f"{name}[{index}].{sub}")
                    if control is not None and sub_value is not None:
                        results.append(_result(control, sub_value))
        elif value is not None and name in by_field:
            results.append(_result(by_field[name], value))
    return results


def task_json(
    *,
    image_url: str,
    image_id: str,
    drop_id: str,
    path: str,
    rank: int,
    score: float,
    reasons: str,
    model_id: str | None,
    answers: Mapping[Task, Mapping[str, Any]],
) -> dict[str, Any]:
    """One Label Studio task: the image, why it is queued, and the VLM's answers prefilled."""
    task: dict[str, Any] = {
        "data": {
            IMAGE_OBJECT: image_url,
            REASONS_OBJECT: reasons,
            "image_id": image_id,
            "drop_id": drop_id,
            "path": path,
            "rank": rank,
            "score": score,
            "pipeline": PIPELINE_MARK,
        }
    }
    results = [item for t, parsed in answers.items() for item in prediction_results(t, parsed)]
    if results and model_id:
        task["predictions"] = [{"model_version": model_id, "result": results}]
    return task


# -- reading an export -------------------------------------------------------------------------


@dataclass(frozen=True)
class HumanLabel:
    image_id: str
    task: str
    field: str
    value: str
    reviewer: str
    reviewed_at: datetime
    annotation_id: int | None


def _timestamp(text: Any, where: str) -> datetime:
    if not isinstance(text, str):
        raise ReviewImportError(f"{where}: no updated_at/created_at timestamp")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise ReviewImportError(f"{where}: bad timestamp {text!r}") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _reviewer(annotation: Mapping[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        return str(who.get("email") or f"user {who.get('id')}")
    if who is None:
        return "unknown"
    return f"user {who}"


def _values(item: Mapping[str, Any], control: Control) -> Any:
    value = item.get("value")
    if not isinstance(value, Mapping):
        raise ValueError("result has no value object")
    if control.kind == "choices":
        chosen = value.get("choices")
        if control.multiple:
            if not isinstance(chosen, list):
                raise ValueError(f"expected a list of choices, got {chosen!r}")
            return chosen
        if not isinstance(chosen, list) or len(chosen) != 1:
            raise ValueError(f"expected exactly one choice, got {chosen!r}")
        return chosen[0]
    if control.kind == "number":
        return value.get("number")
    text = value.get("text")
    if isinstance(text, list):
        if len(text) != 1:
            raise ValueError(f"expected one text, got {text!r}")
        text = text[0]
    return text


def parse_export(text: str, tasks: Sequence[Task], *, source: str) -> list[HumanLabel]:
    """Every human label in a Label Studio JSON export of our tasks; raises on anything else.

    All problems are collected first and reported together, so a rejected file says everything
    that is wrong with it; nothing is returned from a file with any problem.
    """
    try:
        exported = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReviewImportError(
            f"{source}: not valid JSON ({error}); the file is truncated or is not a Label Studio "
            "JSON export"
        ) from error
    if not isinstance(exported, list):
        raise ReviewImportError(
            f"{source}: expected Label Studio's JSON export (a list of tasks), got "
            f"{type(exported).__name__}"
        )
    by_name = control_map(tasks)
    problems: list[str] = []
    labels: dict[tuple[str, str, str, str], HumanLabel] = {}
    for position, item in enumerate(exported):
        where = f"{source}: task #{position}"
        if not isinstance(item, Mapping) or not isinstance(item.get("data"), Mapping):
            problems.append(f"{where}: not a task object with `data`")
            continue
        where = f"{source}: task {item.get('id', f'#{position}')}"
        data = item["data"]
        if data.get("pipeline") != PIPELINE_MARK or not isinstance(data.get("image_id"), str):
            problems.append(
                f"{where}: not exported by this pipeline (no `pipeline`={PIPELINE_MARK!r} and "
                "`image_id` in its data)"
            )
            continue
        annotations = item.get("annotations")
        if annotations is None:
            problems.append(f"{where}: no `annotations` (a JSON-MIN or CSV export? use JSON)")
            continue
        for annotation in annotations:
            if not isinstance(annotation, Mapping) or annotation.get("was_cancelled"):
                continue
            at_where = f"{where} annotation {annotation.get('id')}"
            try:
                reviewed_at = _timestamp(
                    annotation.get("updated_at") or annotation.get("created_at"), at_where
                )
            except ReviewImportError as error:
                problems.append(str(error))
                continue
            reviewer = _reviewer(annotation)
            found: dict[str, tuple[Control, str]] = {}
            for result in annotation.get("result") or []:
                name = result.get("from_name") if isinstance(result, Mapping) else None
                control = by_name.get(name) if isinstance(name, str) else None
                if control is None:
                    problems.append(
                        f"{at_where}: control {name!r} is not in this pipeline's labeling config"
                    )
                    continue
                try:
                    found[control.name] = (control, control.check(_values(result, control)))
                except ValueError as error:
                    problems.append(f"{at_where}: {control.name}: {error}")
            counts = {
                (c.task, c.list_field): int(v)
                for c, v in found.values()
                if c.list_field and c.index is None
            }
            for control, value in found.values():
                limit = counts.get((control.task, control.list_field))
                if control.index is not None and limit is not None and control.index >= limit:
                    continue  # a slot past the count the reviewer gave
                key = (data["image_id"], control.task, control.field, reviewer)
                earlier = labels.get(key)
                if earlier is None or earlier.reviewed_at <= reviewed_at:
                    labels[key] = HumanLabel(
                        image_id=data["image_id"],
                        task=control.task,
                        field=control.field,
                        value=value,
                        reviewer=reviewer,
                        reviewed_at=reviewed_at,
                        annotation_id=annotation.get("id")
                        if isinstance(annotation.get("id"), int)
                        else None,
                    )
    if problems:
        shown = "\n  ".join(problems[:MAX_ERRORS_SHOWN])
        more = len(problems) - MAX_ERRORS_SHOWN
        raise ReviewImportError(
            f"{source}: rejected, nothing imported ({len(problems)} problems):\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    if not labels:
        raise ReviewImportError(
            f"{source}: no completed annotations in the file (export after reviewing); "
            "nothing imported"
        )
    return sorted(labels.values(), key=lambda h: (h.image_id, h.task, h.field, h.reviewer))
