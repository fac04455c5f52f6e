"""Zero-shot kNN, as the SigLIP validation script of TritonsProngs defines it.

That script (`model_repository/siglip_text/validate.py` in github.com/mhendrey/TritonsProngs,
following the SigLIP paper's zero-shot protocol) embeds one text per class ("A photo of a
{class}."), fits scikit-learn's `KNeighborsClassifier(n_neighbors=10, weights="distance",
metric="cosine")` on those class-text embeddings, and scores every validation image with
`predict_proba` and `top_k_accuracy_score` at k=1 and k=5. This module computes the same thing
without scikit-learn:

- distance = 1 - cosine(image, class text), over unit vectors;
- the `k` (10) nearest class texts vote, each with weight 1/distance; a class text at distance 0
  gets all the weight (scikit-learn's rule for an exact match; here "0" is below `EXACT`, since
  1 - cos of two equal float vectors is rarely exactly 0); with fewer class texts than `k`,
  all of them vote (scikit-learn would refuse);
- a class's score is the sum of its voters' weights over the total, and the ranking is by score
  (ties by label, so it is reproducible; scikit-learn breaks ties by class index);
- top-k accuracy is the share of images whose true label is among the first k of the ranking.

With one text embedding per class, the 1/distance vote ranks the k nearest classes by cosine, so
top-k for k <= `k` is the cosine ranking's top-k. Top-k is reported only where the label set has
more than k classes: on a set of five, top-5 is 1 by construction and says nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NEIGHBOURS = 10  # n_neighbors of the validation script
TOP_K = (1, 5)
EXACT = 1e-9  # a cosine distance below this is an exact match


def knn_scores(
    images: np.ndarray, classes: np.ndarray, class_labels: Sequence[str], k: int = NEIGHBOURS
) -> list[dict[str, float]]:
    """Per image, the distance-weighted vote of its `k` nearest class texts (labels -> share).

    `images` (N, D) and `classes` (C, D) are unit rows; `class_labels[c]` labels row c (a label
    may label several rows: its rows' votes add up)."""
    if classes.ndim != 2 or len(classes) != len(class_labels):
        raise ValueError(
            f"{len(class_labels)} labels for class embeddings of shape {classes.shape}"
        )
    if k < 1:
        raise ValueError("k must be at least 1")
    if images.size == 0:
        return []
    k = min(k, len(classes))
    distances = 1.0 - images.astype(np.float64) @ classes.astype(np.float64).T
    distances = np.clip(distances, 0.0, 2.0)  # rounding can take 1 - cos a hair below 0
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    scores = []
    for row, nearest in zip(distances, order, strict=True):
        d = row[nearest]
        exact = d < EXACT
        weights = exact.astype(np.float64) if exact.any() else 1.0 / d
        votes: dict[str, float] = {}
        for index, weight in zip(nearest, weights, strict=True):
            label = class_labels[index]
            votes[label] = votes.get(label, 0.0) + float(weight)
        total = sum(votes.values())
        scores.append({label: weight / total for label, weight in votes.items()})
    return scores


def ranking(scores: dict[str, float]) -> list[str]:
    """Labels by score, highest first; ties by label."""
    return [label for label, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def reported_top_k(n_classes: int, ks: Sequence[int] = TOP_K) -> list[int]:
    """The k worth reporting on a set of `n_classes`: those below it (top-k over k or fewer
    classes is 1 whatever the model does)."""
    return [k for k in ks if k < n_classes]
