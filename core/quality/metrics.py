"""Classification metrics over plain label lists, computed exactly (no sampling, no sklearn).

Conventions, chosen to match what users of scikit-learn expect:
- macro-F1 averages F1 over the classes that occur in the labels or in the predictions (a class
  nobody labelled and nobody predicted does not drag the mean down); F1 of a class with no true
  positives is 0.
- A confusion matrix has true labels as rows and predictions as columns, in the order given
  (vocabulary order), followed by any unexpected values in sorted order.
- Adjacent-bin accuracy for ordinal labels counts a prediction as right when it is the true bin or
  a neighbouring one; a prediction outside the ordering (e.g. "cannot tell") is wrong, and a truth
  outside it is left out (it has no neighbours).
- Multi-label sets: per value, precision/recall/F1 over the images (a value is a positive where
  it is in the set); micro-F1 pools every value's counts, macro-F1 averages the values that occur
  in a true or predicted set; subset accuracy is the share of exact sets; Jaccard is the mean over
  images of |truth & prediction| / |truth | prediction| (two empty sets: 1).
- Yes/no F1 takes yes (`true`) as the positive class. MAE is the mean absolute difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel


class ClassCounts(BaseModel):
    label: str
    support: int  # how often it is the true label
    predicted: int  # how often it was predicted
    correct: int  # true positives
    precision: float
    recall: float
    f1: float


class ConfusionMatrix(BaseModel):
    labels: list[str]
    matrix: list[list[int]]  # matrix[i][j]: true labels[i] predicted as labels[j]

    def count(self, true: str, predicted: str) -> int:
        return self.matrix[self.labels.index(true)][self.labels.index(predicted)]

    @property
    def total(self) -> int:
        return sum(sum(row) for row in self.matrix)


def _check_pairs(y_true: Sequence[str], y_pred: Sequence[str]) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")


def accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    _check_pairs(y_true, y_pred)
    if not y_true:
        return float("nan")
    return sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)


def label_order(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> list[str]:
    """`labels` first (vocabulary order), then any other observed value, sorted."""
    order = list(labels or [])
    return order + sorted((set(y_true) | set(y_pred)) - set(order))


def _class_counts(label: str, support: int, predicted: int, correct: int) -> ClassCounts:
    """One class's counts with precision, recall and F1 (0 where undefined), shared by the
    single- and multi-label metrics so both define them the same way."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ClassCounts(
        label=label,
        support=support,
        predicted=predicted,
        correct=correct,
        precision=precision,
        recall=recall,
        f1=f1,
    )


def per_class_counts(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> list[ClassCounts]:
    """Support, predictions, hits, precision, recall and F1 per class (0 where undefined)."""
    _check_pairs(y_true, y_pred)
    rows = []
    for label in label_order(y_true, y_pred, labels):
        support = sum(t == label for t in y_true)
        predicted = sum(p == label for p in y_pred)
        correct = sum(t == p == label for t, p in zip(y_true, y_pred, strict=True))
        rows.append(_class_counts(label, support, predicted, correct))
    return rows


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    observed = [c for c in per_class_counts(y_true, y_pred) if c.support or c.predicted]
    if not observed:
        return float("nan")
    return sum(c.f1 for c in observed) / len(observed)


def confusion_matrix(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> ConfusionMatrix:
    _check_pairs(y_true, y_pred)
    order = label_order(y_true, y_pred, labels)
    index = {label: i for i, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[index[t]][index[p]] += 1
    return ConfusionMatrix(labels=order, matrix=matrix)


def adjacent_accuracy(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    order: Sequence[str],
    *,
    off_scale: Sequence[str] = (),
) -> float:
    """Share of predictions within one bin of the truth on the ordinal scale `order`.

    Pairs whose truth is in `off_scale` (a "cannot tell" value) are left out; a prediction off
    the scale is wrong."""
    _check_pairs(y_true, y_pred)
    rank = {label: i for i, label in enumerate(order) if label not in off_scale}
    pairs = [(t, p) for t, p in zip(y_true, y_pred, strict=True) if t not in off_scale]
    if not pairs:
        return float("nan")
    unknown = {t for t, _ in pairs} - set(rank)
    if unknown:
        raise ValueError(
            f"true labels {sorted(unknown)} are not on the ordinal scale {list(order)}"
        )
    hits = sum(p in rank and abs(rank[p] - rank[t]) <= 1 for t, p in pairs)
    return hits / len(pairs)


def multi_label_metrics(
    y_true: Sequence[frozenset[str]],
    y_pred: Sequence[frozenset[str]],
    values: Sequence[str] = (),
) -> tuple[dict[str, float], list[ClassCounts]]:
    """Micro/macro F1, subset accuracy and mean Jaccard of predicted sets, and the per-value
    counts (`values` first, in order, then any other value seen, sorted)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} label sets but {len(y_pred)} predictions")
    seen = set().union(*y_true, *y_pred) if y_true else set()
    order = list(values) + sorted(seen - set(values))
    rows = []
    for value in order:
        support = sum(value in t for t in y_true)
        predicted = sum(value in p for p in y_pred)
        correct = sum(value in t and value in p for t, p in zip(y_true, y_pred, strict=True))
        rows.append(_class_counts(value, support, predicted, correct))
    if not y_true:
        nan = float("nan")
        return {"micro_f1": nan, "macro_f1": nan, "subset_accuracy": nan, "jaccard": nan}, rows
    tp = sum(r.correct for r in rows)
    fp = sum(r.predicted - r.correct for r in rows)
    fn = sum(r.support - r.correct for r in rows)
    observed = [r for r in rows if r.support or r.predicted]
    jaccard = [
        len(t & p) / len(t | p) if t | p else 1.0 for t, p in zip(y_true, y_pred, strict=True)
    ]
    metrics = {
        "micro_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "macro_f1": sum(r.f1 for r in observed) / len(observed) if observed else float("nan"),
        "subset_accuracy": sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true),
        "jaccard": sum(jaccard) / len(jaccard),
    }
    return metrics, rows


def binary_f1(y_true: Sequence[bool], y_pred: Sequence[bool]) -> float:
    """F1 of the positive class (yes); 0 when it has no true positive, NaN with no pairs."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if not y_true:
        return float("nan")
    tp = sum(t and p for t, p in zip(y_true, y_pred, strict=True))
    fp = sum(p and not t for t, p in zip(y_true, y_pred, strict=True))
    fn = sum(t and not p for t, p in zip(y_true, y_pred, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def mean_absolute_error(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if not y_true:
        return float("nan")
    return sum(abs(t - p) for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)


def ranked(probabilities: Mapping[str, float]) -> list[str]:
    """Labels from most to least probable; ties broken by label so the order is reproducible."""
    return [label for label, _ in sorted(probabilities.items(), key=lambda kv: (-kv[1], kv[0]))]


def top_k_accuracy(y_true: Sequence[str], rankings: Sequence[Sequence[str]], k: int) -> float:
    """Share of items whose true label is among the first `k` of its ranking."""
    if len(y_true) != len(rankings):
        raise ValueError(f"{len(y_true)} labels but {len(rankings)} rankings")
    if k < 1:
        raise ValueError("k must be at least 1")
    if not y_true:
        return float("nan")
    return sum(t in list(r)[:k] for t, r in zip(y_true, rankings, strict=True)) / len(y_true)
