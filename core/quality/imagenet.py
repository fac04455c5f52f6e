"""The many-class label set: ImageNet-1k class names, for zero-shot kNN where top-5 means something.

The names are `open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES` (the 1,000 class names OpenAI
cleaned up for CLIP's zero-shot evaluation, shipped inside the open_clip package), in class-index
order; nothing is copied into this repository. Two names occur twice in that list ("missile" at
indices 657 and 744, "sunglasses" at 836 and 837), so as labels they are 998 classes, and both
class texts of a doubled name vote for it.

The class texts are the validation script's single prompt, "A photo of a {name}." (see
`core.quality.knn`). Ground truth comes from a labelled set with the field `imagenet_class`
(`data/labelled/samples.csv` labels four of the bundled photographs this way, by eye).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from core.clip.embed import embed_texts
from core.clip.loading import ClipModel

FIELD = "imagenet_class"
PROMPT = "A photo of a {}."
LABEL_SET = "imagenet1k"  # the `task` of its evaluation rows
EMBEDDING_KIND = "global"  # the image embeddings it compares: one vector per image

CLASS_NAMES: tuple[str, ...] = tuple(IMAGENET_CLASSNAMES)
VALUES: tuple[str, ...] = tuple(dict.fromkeys(CLASS_NAMES))  # unique names, first-index order


def fingerprint() -> str:
    """Changes when the class names or the prompt change (open_clip upgrade, edit here)."""
    payload = json.dumps([list(CLASS_NAMES), PROMPT])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


_embedded: dict[tuple[int, str], np.ndarray] = {}


def class_embeddings(clip: ClipModel, batch_size: int = 256) -> np.ndarray:
    """(1000, D) unit rows, one per class index, computed once per loaded model."""
    key = (id(clip.model), clip.model_id)
    if key not in _embedded:
        rows = []
        for start in range(0, len(CLASS_NAMES), batch_size):
            texts = [PROMPT.format(name) for name in CLASS_NAMES[start : start + batch_size]]
            rows.append(embed_texts(clip, texts))
        _embedded[key] = np.concatenate(rows)  # embed_texts returns unit rows
    return _embedded[key]
