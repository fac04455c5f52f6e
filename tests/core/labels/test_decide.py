"""The multi-label decision rule turns CLIP's per-value scores into a set the field allows."""

from __future__ import annotations

from core.labels.label_set import LabelSet

PHRASES = {"a": "an a", "b": "a b", "c": "a c", "d": "a d"}


def rule(**kwargs) -> LabelSet:
    return LabelSet(name="tags", phrases=PHRASES, multi_label=True, **kwargs)


def test_the_default_keeps_values_above_the_uniform_share_within_min_and_max():
    tags = rule(min_items=1, max_items=2)
    assert tags.decide([0.3, 0.3, 0.2, 0.2]) == ["a", "b"]  # above 1/4
    assert tags.decide([0.25, 0.25, 0.25, 0.25]) == ["a"]  # none above: the min, best first
    assert tags.decide([0.26, 0.27, 0.28, 0.19]) == ["b", "c"]  # three above: the best two
    assert rule(min_items=0, max_items=4).decide([0.25] * 4) == []
    assert tags.decision_rule == "score > 1/4, 1 to 2 values"


def test_top_k_and_threshold():
    assert rule(top_k=2, min_items=1, max_items=3).decide([0.1, 0.5, 0.1, 0.3]) == ["b", "d"]
    threshold = rule(threshold=0.3, min_items=0, max_items=3)
    assert threshold.decide([0.1, 0.5, 0.1, 0.3]) == ["b", "d"]
    assert threshold.decide([0.25, 0.25, 0.25, 0.25]) == []
    assert threshold.decision_rule == "score >= 0.3, 0 to 3 values"


def test_the_rule_is_not_part_of_the_fingerprint():
    assert rule(top_k=1).fingerprint == rule(threshold=0.4).fingerprint == rule().fingerprint
