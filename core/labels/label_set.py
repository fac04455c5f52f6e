"""A CLIP zero-shot label set: a choice field's values, each with a phrase CLIP reads well.

Labels are exactly the field's values (so zero-shot and extracted labels compare value for
value); the phrase is what goes into the prompt templates. A label set's fingerprint changes when
its labels, phrases or templates change, so cached text embeddings never go stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, model_validator

from core.labels.spec import GENERIC_TEMPLATES

__all__ = ["GENERIC_TEMPLATES", "LabelSet"]


class LabelSet(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    phrases: dict[str, str]  # label (a field value) -> human-readable phrase
    templates: tuple[str, ...] = GENERIC_TEMPLATES
    # A multi_choice field's label set: each value is scored, and the decision rule (`decide`)
    # turns the scores into a set of `min_items` to `max_items` values.
    multi_label: bool = False
    threshold: float | None = None
    top_k: int | None = None
    min_items: int = 0
    max_items: int | None = None

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

    def decide(self, scores: Sequence[float]) -> list[str]:
        """A multi-label set's values from per-value scores (`labels` order; softmax shares).

        `top_k`: the k best-scored values. `threshold`: every value scoring at least it. Neither
        given (the default): every value scoring above the uniform share 1/n, i.e. above what
        it would get if CLIP could not tell the values apart. Then, by score, at least
        `min_items` and at most `max_items` values are kept, so the set is always one the field
        allows; it is returned in `labels` order."""
        order = sorted(range(len(self.labels)), key=lambda i: (-scores[i], i))
        if self.top_k is not None:
            chosen = order[: self.top_k]
        elif self.threshold is not None:
            chosen = [i for i in order if scores[i] >= self.threshold]
        else:
            chosen = [i for i in order if scores[i] > 1 / len(self.labels)]
        low = self.min_items
        high = len(self.labels) if self.max_items is None else self.max_items
        if len(chosen) < low:
            chosen = order[:low]
        chosen = chosen[:high]
        return [self.labels[i] for i in sorted(chosen)]

    @property
    def decision_rule(self) -> str:
        if self.top_k is not None:
            rule = f"top {self.top_k}"
        elif self.threshold is not None:
            rule = f"score >= {self.threshold}"
        else:
            rule = f"score > 1/{len(self.labels)}"
        return f"{rule}, {self.min_items} to {self.max_items or len(self.labels)} values"

    @property
    def fingerprint(self) -> str:
        """Of what the text embeddings depend on (phrases, templates), not the decision rule."""
        payload = json.dumps([self.phrases, list(self.templates)], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
