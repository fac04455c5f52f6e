"""Zero-shot labels: the vocabulary's values, probabilities that sum to 1, cached text embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from core.clip.zero_shot import classify, label_embeddings, probabilities
from core.tasks.label_sets import LABEL_SETS, LabelSet
from tests.fixtures.vocabulary import AGE_BINS, BASKETBALL_ACTIONS, SCENERY

pytestmark = pytest.mark.both_backends  # the warehouse SQL runs on the file and the lake


def test_label_sets_use_the_shared_vocabulary():
    assert LABEL_SETS["scenery"].labels == SCENERY
    assert LABEL_SETS["age_group"].labels == AGE_BINS
    assert LABEL_SETS["basketball_action"].labels == BASKETBALL_ACTIONS
    assert LABEL_SETS["scenery"].prompts("night_time")[0] == "a photo of a dark scene at night."


def test_fingerprint_changes_with_the_prompts():
    base = LABEL_SETS["basketball_action"]
    edited = base.model_copy(update={"templates": ("a blurry photo of {}.",)})
    assert edited.fingerprint != base.fingerprint
    with pytest.raises(ValueError, match="placeholder"):
        LabelSet(name="x", phrases={"a": "a", "b": "b"}, templates=("no slot",))


def test_probabilities_sum_to_one_for_every_image_and_label_set(standin_clip):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 64)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    for label_set in LABEL_SETS.values():
        probs = classify(standin_clip, images, label_set)
        assert probs.shape == (5, len(label_set.labels))
        assert np.allclose(probs.sum(axis=1), 1.0)
        assert (probs > 0).all()


def test_an_image_that_matches_a_label_text_gets_that_label(standin_clip):
    label_set = LABEL_SETS["scenery"]
    texts = label_embeddings(standin_clip, label_set)
    probs = probabilities(texts, texts, scale=100.0)
    assert (probs.argmax(axis=1) == np.arange(len(label_set.labels))).all()


def test_text_embeddings_are_computed_once_per_label_set(standin_clip):
    first = label_embeddings(standin_clip, LABEL_SETS["age_group"])
    assert label_embeddings(standin_clip, LABEL_SETS["age_group"]) is first
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
