"""Zero-shot labels: softmax over logit_scale x cosine(image, averaged prompt embeddings).

Each label's text embedding is the normalised mean of its prompts' embeddings (CLIP's prompt
ensembling). Text embeddings are computed once per (model, label set fingerprint) and cached for
the life of the process, so a run encodes each label set once however many images it labels.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.clip import store
from core.clip.embed import embed_texts, logit_scale
from core.clip.loading import ClipModel
from core.tasks.label_sets import LabelSet
from core.warehouse import Warehouse

ZERO_SHOT_BATCH = 4096  # images per write transaction

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


@dataclass
class ZeroShotReport:
    """What labelling one drop did, per label set: images labelled now, already labelled, and
    images without an embedding of the model (nothing to label)."""

    drop_id: str
    model_id: str
    written: dict[str, int] = field(default_factory=dict)
    already: dict[str, int] = field(default_factory=dict)
    without_embedding: dict[str, int] = field(default_factory=dict)


def label_drop(
    warehouse: Warehouse,
    clip: ClipModel,
    drop_id: str,
    label_sets: Sequence[LabelSet],
    *,
    batch: int = ZERO_SHOT_BATCH,
    log: Callable[[str], None] = lambda _: None,
) -> ZeroShotReport:
    """Score the drop's images that have no current row (this label-set version, this model)
    against every label set; one transaction per `batch` images, so a crash loses at most the
    batch in flight and a rerun labels only what is left."""
    report = ZeroShotReport(drop_id=drop_id, model_id=clip.model_id)
    image_ids = [image.image_id for image in store.drop_images(warehouse, drop_id)]
    for label_set in label_sets:
        name = label_set.name
        done = store.zero_shot_done(
            warehouse, clip.model_id, name, label_set.fingerprint, image_ids
        )
        todo = [image_id for image_id in image_ids if image_id not in done]
        ids, vectors = store.read_embeddings(
            warehouse, clip.embed_dim, clip.model_id, "global", todo
        )
        report.already[name] = len(done)
        report.without_embedding[name] = len(todo) - len(ids)
        report.written[name] = 0
        for start in range(0, len(ids), batch):
            chunk = slice(start, start + batch)
            probs = classify(clip, vectors[chunk], label_set)
            decided = [label_set.decide(row) for row in probs] if label_set.multi_label else None
            report.written[name] += warehouse.write(
                functools.partial(
                    store.write_zero_shot,
                    image_ids=ids[chunk],
                    probabilities=probs,
                    labels=label_set.labels,
                    model_id=clip.model_id,
                    label_set=name,
                    fingerprint=label_set.fingerprint,
                    decided=decided,
                )
            )
        log(f"clip_zero_shot {name}: {report.written[name]} images labelled, {len(done)} already")
    return report
