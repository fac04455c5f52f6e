"""Zero-shot labels: softmax over logit_scale x cosine(image, averaged prompt embeddings).

Each label's text embedding is the normalised mean of its prompts' embeddings (CLIP's prompt
ensembling). Text embeddings are computed once per (model, label set fingerprint) and cached for
the life of the process, so a run encodes each label set once however many images it labels.
"""

from __future__ import annotations

import threading

import numpy as np

from core.clip.embed import embed_texts, logit_scale
from core.clip.loading import ClipModel
from core.tasks.label_sets import LabelSet

_cache: dict[tuple[int, str, str, str], np.ndarray] = {}
_lock = threading.Lock()


def label_embeddings(clip: ClipModel, label_set: LabelSet) -> np.ndarray:
    """(labels, D) unit rows in `label_set.labels` order, cached per model and label set."""
    key = (id(clip.model), clip.model_id, label_set.name, label_set.fingerprint)
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    rows = []
    for label in label_set.labels:
        mean = embed_texts(clip, label_set.prompts(label)).mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    matrix = np.stack(rows).astype(np.float32)
    with _lock:
        _cache[key] = matrix
    return matrix


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def probabilities(
    image_embeddings: np.ndarray, text_embeddings: np.ndarray, scale: float
) -> np.ndarray:
    """(N, D) x (L, D) unit rows -> (N, L) probabilities; each row sums to 1."""
    logits = scale * (image_embeddings.astype(np.float64) @ text_embeddings.astype(np.float64).T)
    return softmax(logits)


def classify(clip: ClipModel, image_embeddings: np.ndarray, label_set: LabelSet) -> np.ndarray:
    return probabilities(image_embeddings, label_embeddings(clip, label_set), logit_scale(clip))
