"""Labelled fields: where each is predicted by CLIP zero-shot and by a VLM task.

One row per field a labelled set can carry. The field name is what a labels CSV's `field` column
holds; vocabulary values are disjoint across fields, so a bare label also names its field.
"""

from __future__ import annotations

from pydantic import BaseModel

from core.quality import imagenet
from core.tasks.vocabulary import AGE_BINS, BASKETBALL_ACTIONS, GENDERS, SCENERY


class LabelField(BaseModel, frozen=True):
    name: str
    values: tuple[str, ...]
    ordinal: bool = False  # adjacent values are neighbours (age bins)
    zero_shot_label_set: str | None = None  # clip_zero_shot.label_set predicting it
    task: str | None = None  # VLM task whose table predicts it
    column: str | None = None  # column of task_<task> holding the value

    @property
    def task_table(self) -> str | None:
        return f"task_{self.task}" if self.task else None


FIELDS: dict[str, LabelField] = {
    field.name: field
    for field in (
        LabelField(
            name="scenery",
            values=SCENERY,
            zero_shot_label_set="scenery",
            task="scenery_people",
            column="scenery",
        ),
        LabelField(
            name="age_group",
            values=AGE_BINS,
            ordinal=True,
            zero_shot_label_set="age_group",
            task="age_gender",
            column="age_group",
        ),
        LabelField(name="gender", values=GENDERS, task="age_gender", column="gender"),
        LabelField(
            name="basketball_action",
            values=BASKETBALL_ACTIONS,
            zero_shot_label_set="basketball_action",
            task="basketball_action",
            column="action",
        ),
        # The many-class set: ImageNet-1k class names; predicted by zero-shot kNN on the image
        # embeddings (core/quality/imagenet.py), by no VLM task.
        LabelField(name=imagenet.FIELD, values=imagenet.VALUES),
    )
}

# Fields both CLIP zero-shot and a VLM task predict: the agreement checks compare these.
AGREEMENT_FIELDS: tuple[str, ...] = ("scenery", "age_group")


def field_for_label(label: str) -> LabelField:
    """The one field whose vocabulary holds `label`."""
    matches = [field for field in FIELDS.values() if label in field.values]
    if not matches:
        known = {name: list(field.values) for name, field in FIELDS.items()}
        raise ValueError(f"label {label!r} belongs to no known field; known labels: {known}")
    return matches[0]
