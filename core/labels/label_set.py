"""A CLIP zero-shot label set: a choice field's values, each with a phrase CLIP reads well.

Labels are exactly the field's values (so zero-shot and extracted labels compare value for
value); the phrase is what goes into the prompt templates. A label set's fingerprint changes when
its labels, phrases or templates change, so cached text embeddings never go stale.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, model_validator

from core.labels.spec import GENERIC_TEMPLATES

__all__ = ["GENERIC_TEMPLATES", "LabelSet"]


class LabelSet(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    phrases: dict[str, str]  # label (a field value) -> human-readable phrase
    templates: tuple[str, ...] = GENERIC_TEMPLATES
    # A multi_choice field's label set: each value is scored, and the decision rule (one of
    # `threshold`, `top_k`; neither given: the consumer's default) turns scores into a set.
    multi_label: bool = False
    threshold: float | None = None
    top_k: int | None = None

    @model_validator(mode="after")
    def _check(self) -> LabelSet:
        if len(self.phrases) < 2:
            raise ValueError(f"label set {self.name!r} needs at least two labels")
        if any("{}" not in template for template in self.templates):
            raise ValueError(f"every template of {self.name!r} needs a {{}} placeholder")
        return self

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.phrases)

    def prompts(self, label: str) -> list[str]:
        return [template.format(self.phrases[label]) for template in self.templates]

    @property
    def fingerprint(self) -> str:
        """Of what the text embeddings depend on (phrases, templates), not the decision rule."""
        payload = json.dumps([self.phrases, list(self.templates)], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
