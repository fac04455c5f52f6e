"""CLIP zero-shot label sets: the same values as the VLM tasks, each with a phrase CLIP reads well.

Labels are exactly the vocabulary values (so zero-shot and extracted labels compare value for
value); the phrase is what goes into the prompt templates. A label set's fingerprint changes when
its labels, phrases or templates change, so cached text embeddings never go stale.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, model_validator

from core.tasks.vocabulary import AGE_BINS, BASKETBALL_ACTIONS, SCENERY

GENERIC_TEMPLATES = ("a photo of {}.", "a picture of {}.", "an image of {}.")


class LabelSet(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    phrases: dict[str, str]  # label (a vocabulary value) -> human-readable phrase
    templates: tuple[str, ...] = GENERIC_TEMPLATES

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
        payload = json.dumps([self.phrases, list(self.templates)], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


_SCENERY_PHRASES = {
    "blue_sky": "a clear blue sky on a sunny day",
    "cloudy": "an overcast, cloudy sky",
    "golden_hour": "warm golden hour light at sunset",
    "indoors": "an indoor scene inside a room",
    "night_time": "a dark scene at night",
}
_AGE_PHRASES = {
    "18-20": "a teenager, 18 to 20 years old",
    "21-30": "a young adult in their twenties",
    "31-40": "an adult in their thirties",
    "41-50": "a middle-aged adult in their forties",
    "51-60": "an older adult in their fifties",
}
_ACTION_PHRASES = {
    "shooting": "a basketball player shooting the ball at the hoop",
    "dribbling": "a basketball player dribbling the ball",
    "passing": "a basketball player passing the ball to a teammate",
}
assert tuple(_SCENERY_PHRASES) == SCENERY
assert tuple(_AGE_PHRASES) == AGE_BINS
assert tuple(_ACTION_PHRASES) == BASKETBALL_ACTIONS

LABEL_SETS: dict[str, LabelSet] = {
    label_set.name: label_set
    for label_set in (
        LabelSet(name="scenery", phrases=_SCENERY_PHRASES),
        LabelSet(
            name="age_group",
            phrases=_AGE_PHRASES,
            templates=("a photo of {}.", "a portrait of {}.", "a close-up photo of {}."),
        ),
        LabelSet(
            name="basketball_action",
            phrases=_ACTION_PHRASES,
            templates=("a photo of {}.", "a sports photo of {}.", "a picture of {}."),
        ),
    )
}
