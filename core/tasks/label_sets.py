"""CLIP zero-shot label sets: one per choice field of the labeling spec whose values have phrases
(`core.labels.derive.build_label_sets`), named by the field's `labelled_as` or its name."""

from __future__ import annotations

from core.labels.derive import build_label_sets
from core.labels.label_set import GENERIC_TEMPLATES, LabelSet
from core.labels.loader import current_spec

__all__ = ["GENERIC_TEMPLATES", "LABEL_SETS", "LabelSet"]

LABEL_SETS: dict[str, LabelSet] = build_label_sets(current_spec())
