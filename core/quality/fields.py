"""Labelled fields: where each is predicted by CLIP zero-shot and by a VLM task.

One row per field a labelled set can carry, derived from the labeling spec in use: every
top-level field of a task except free text and entity lists, named by its `labelled_as` (default:
its name). The field name is what a labels CSV's `field` column holds; where values are disjoint
across fields, a bare label also names its field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from core.labels.loader import current_spec
from core.labels.spec import (
    ChoiceField,
    IntegerField,
    LabelsSpec,
    MultiChoiceField,
    NumberField,
    YesNoField,
)
from core.quality import imagenet

FieldKind = Literal["choice", "multi_choice", "yes_no", "integer", "number"]


class LabelField(BaseModel, frozen=True):
    name: str
    values: tuple[str, ...] = ()  # the allowed answers (choice, multi_choice), in spec order
    kind: FieldKind = "choice"
    ordinal: bool = False  # adjacent values are neighbours (age bins)
    cannot_tell: str | None = None  # choice: the value meaning "cannot tell" (last of `values`)
    min_items: int | None = None  # multi_choice: bounds of the set's size
    max_items: int | None = None
    minimum: float | None = None  # integer, number: the range
    maximum: float | None = None
    zero_shot_label_set: str | None = None  # clip_zero_shot.label_set predicting it
    agreement: bool = False  # CLIP zero-shot and the VLM are compared on it
    task: str | None = None  # VLM task whose table predicts it
    column: str | None = None  # column of task_<task> holding the value

    @property
    def task_table(self) -> str | None:
        return f"task_{self.task}" if self.task else None


def spec_fields(spec: LabelsSpec) -> list[LabelField]:
    """The labelled fields a spec declares (see the module docstring)."""
    out: list[LabelField] = []
    for task in spec.tasks:
        for field in task.fields:
            common = {"task": task.name, "column": field.name}
            if isinstance(field, ChoiceField | MultiChoiceField):
                label_set = field.label_name if field.has_label_set else None
                agreement = bool(label_set) and (
                    field.zero_shot is None or field.zero_shot.agreement
                )
                common |= {
                    "name": field.label_name,
                    "values": field.allowed,
                    "zero_shot_label_set": label_set,
                    "agreement": agreement,
                }
                if isinstance(field, ChoiceField):
                    out.append(
                        LabelField(ordinal=field.ordinal, cannot_tell=field.cannot_tell, **common)
                    )
                else:
                    out.append(
                        LabelField(
                            kind="multi_choice", min_items=field.min, max_items=field.max, **common
                        )
                    )
            elif isinstance(field, YesNoField):
                out.append(LabelField(name=field.name, kind="yes_no", **common))
            elif isinstance(field, IntegerField | NumberField):
                kind: FieldKind = "integer" if isinstance(field, IntegerField) else "number"
                out.append(
                    LabelField(
                        name=field.name,
                        kind=kind,
                        minimum=field.min,
                        maximum=field.max,
                        **common,
                    )
                )
    return out


def _fields(spec: LabelsSpec) -> dict[str, LabelField]:
    fields = spec_fields(spec)
    # The many-class set: ImageNet-1k class names; predicted by zero-shot kNN on the image
    # embeddings (core/quality/imagenet.py), by no VLM task.
    fields.append(LabelField(name=imagenet.FIELD, values=imagenet.VALUES))
    by_name: dict[str, LabelField] = {}
    for field in fields:
        if field.name in by_name:
            raise ValueError(f"labelled field {field.name!r} is declared twice")
        by_name[field.name] = field
    return by_name


FIELDS: dict[str, LabelField] = _fields(current_spec())

# Single-choice fields both CLIP zero-shot and a VLM task predict (the review queue compares
# their top label with the VLM's value).
AGREEMENT_FIELDS: tuple[str, ...] = tuple(
    name for name, field in FIELDS.items() if field.agreement and field.kind == "choice"
)
# Every field the `label_agreement` asset compares: the single-choice ones above and the
# multi-label ones (by mean Jaccard, `core.quality.cross_stage.multi_label_agreement`).
COMPARED_FIELDS: tuple[str, ...] = tuple(
    name
    for name, field in FIELDS.items()
    if field.agreement and field.kind in ("choice", "multi_choice")
)


def field_for_label(label: str) -> LabelField:
    """The one field whose vocabulary holds `label`."""
    matches = [field for field in FIELDS.values() if label in field.values]
    if not matches:
        known = {name: list(field.values) for name, field in FIELDS.items()}
        raise ValueError(f"label {label!r} belongs to no known field; known labels: {known}")
    if len(matches) > 1:
        names = ", ".join(field.name for field in matches)
        raise ValueError(f"label {label!r} is a value of several fields ({names}): name the field")
    return matches[0]
