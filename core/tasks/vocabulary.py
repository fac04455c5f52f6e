"""The bundled spec's values by name, for the local stand-in models and the tests written for the
built-in tasks (`labels/default.yaml`, whatever `IMAGE_PIPELINE_LABELS` says).

A compatibility layer: the pipeline reads a field's values from the spec in use
(`core.quality.fields.FIELDS`, `Task.spec`); this module goes once the stand-ins serve any spec.
"""

from __future__ import annotations

from core.labels.loader import default_spec

_DEFAULT = default_spec()


def _values(task: str, field: str) -> tuple[str, ...]:
    return tuple(_DEFAULT.task(task).field(field).values)


SCENERY: tuple[str, ...] = _values("scenery_people", "scenery")
AGE_BINS: tuple[str, ...] = _values("age_gender", "age_group")  # ordinal: adjacent bins
GENDERS: tuple[str, ...] = _values("age_gender", "gender")
BASKETBALL_ACTIONS: tuple[str, ...] = _values("basketball_action", "action")
