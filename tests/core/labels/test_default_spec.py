"""The bundled spec reproduces the built-in tasks and label sets exactly: an upgrade re-extracts
nothing and re-embeds no label phrase."""

from __future__ import annotations

from core.labels.derive import build_label_sets, build_tasks
from core.labels.loader import DEFAULT_SPEC_PATH, default_spec, spec_path
from core.quality.fields import AGREEMENT_FIELDS, FIELDS
from core.tasks.label_sets import LABEL_SETS
from core.tasks.registry import TASKS

# Computed with the hand-written task modules (core/tasks/scenery_people.py, age_gender.py,
# basketball_action.py, label_sets.py at commit 971fa15) just before they were replaced by the
# spec: `{t.name: t.fingerprint for t in TASKS.values()}` and the label sets' fingerprints.
TASK_FINGERPRINTS = {
    "scenery_people": "0c1ea37b194be49d",
    "age_gender": "3460a0de1da735c2",
    "basketball_action": "816b55ec5731f023",
}
LABEL_SET_FINGERPRINTS = {
    "scenery": "34d119eae5f2db50",
    "age_group": "bd36da4bad3c0201",
    "basketball_action": "9208fb5495655d0a",
}
# From the same commit: `get_task("age_gender").schema_json`.
AGE_GENDER_SCHEMA = (
    '{"additionalProperties":false,"properties":{"age_group":{"description":"apparent age in'
    ' years of the most prominent person","enum":["18-20","21-30","31-40","41-50","51-60"],'
    '"type":"string"},"gender":{"description":"apparent gender of the same person","enum":'
    '["female","male"],"type":"string"}},"required":["age_group","gender"],"type":"object",'
    '"title":"age_gender"}'
)


def test_the_default_spec_is_bundled_outside_core(monkeypatch):
    monkeypatch.delenv("IMAGE_PIPELINE_LABELS", raising=False)
    assert spec_path() == DEFAULT_SPEC_PATH
    assert DEFAULT_SPEC_PATH.parent.name == "labels" and "core" not in DEFAULT_SPEC_PATH.parts


def test_task_fingerprints_and_schemas_are_unchanged():
    tasks = build_tasks(default_spec())
    assert {name: task.fingerprint for name, task in tasks.items()} == TASK_FINGERPRINTS
    assert tasks["age_gender"].schema_json == AGE_GENDER_SCHEMA
    assert [t.max_completion_tokens for t in tasks.values()] == [384, 64, 48]
    assert {name: task.fingerprint for name, task in TASKS.items()} == TASK_FINGERPRINTS


def test_label_sets_are_unchanged():
    sets = build_label_sets(default_spec())
    assert {name: s.fingerprint for name, s in sets.items()} == LABEL_SET_FINGERPRINTS
    assert {name: s.fingerprint for name, s in LABEL_SETS.items()} == LABEL_SET_FINGERPRINTS
    assert sets["age_group"].templates == (
        "a photo of {}.",
        "a portrait of {}.",
        "a close-up photo of {}.",
    )


def test_labelled_fields_are_unchanged():
    """FIELDS as core/quality/fields.py declared them by hand at commit 971fa15."""
    expected = {
        "scenery": ("scenery_people", "scenery", "scenery", False, 5),
        "age_group": ("age_gender", "age_group", "age_group", True, 5),
        "gender": ("age_gender", "gender", None, False, 2),
        "basketball_action": ("basketball_action", "action", "basketball_action", False, 3),
    }
    got = {
        name: (f.task, f.column, f.zero_shot_label_set, f.ordinal, len(f.values))
        for name, f in FIELDS.items()
        if f.task
    }
    assert got == expected
    assert list(FIELDS)[-1] == "imagenet_class" and FIELDS["imagenet_class"].task is None
    assert all(f.kind == "choice" for f in FIELDS.values())
    assert FIELDS["age_group"].values == ("18-20", "21-30", "31-40", "41-50", "51-60")
    assert AGREEMENT_FIELDS == ("scenery", "age_group")


def test_the_people_rule_is_declared_in_the_spec():
    (rule,) = default_spec().consistency
    assert (rule.when_answered, rule.expect_entities, rule.max_share) == (
        "age_gender",
        "scenery_people.people",
        0.25,
    )
