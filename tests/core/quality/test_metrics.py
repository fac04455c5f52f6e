"""Metrics reproduce numbers worked out by hand, exactly."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from core.quality.metrics import (
    accuracy,
    adjacent_accuracy,
    confusion_matrix,
    macro_f1,
    per_class_counts,
    ranked,
    top_k_accuracy,
)
from tests.fixtures.vocabulary import AGE_BINS

# Worked example: a a a b b c labelled, a a b b c c predicted.
# Hits at positions 0, 1, 3, 5 -> accuracy 4/6.
# a: support 3, predicted 2, correct 2 -> P 1, R 2/3, F1 4/5
# b: support 2, predicted 2, correct 1 -> P 1/2, R 1/2, F1 1/2
# c: support 1, predicted 2, correct 1 -> P 1/2, R 1, F1 2/3
# macro-F1 = (4/5 + 1/2 + 2/3) / 3 = 59/90
TRUE = ["a", "a", "a", "b", "b", "c"]
PRED = ["a", "a", "b", "b", "c", "c"]


def exactly(value: Fraction) -> object:
    return pytest.approx(float(value), rel=1e-12, abs=0)


def test_accuracy_and_macro_f1_match_the_hand_computation():
    assert accuracy(TRUE, PRED) == exactly(Fraction(4, 6))
    assert macro_f1(TRUE, PRED) == exactly(Fraction(59, 90))


def test_per_class_counts_match_the_hand_computation():
    rows = {row.label: row for row in per_class_counts(TRUE, PRED, labels=["a", "b", "c"])}
    assert (rows["a"].support, rows["a"].predicted, rows["a"].correct) == (3, 2, 2)
    assert rows["a"].f1 == exactly(Fraction(4, 5))
    assert rows["b"].precision == rows["b"].recall == rows["b"].f1 == 0.5
    assert (rows["c"].precision, rows["c"].recall) == (0.5, 1.0)
    assert rows["c"].f1 == exactly(Fraction(2, 3))


def test_confusion_matrix_rows_are_truth_columns_predictions_in_vocabulary_order():
    matrix = confusion_matrix(TRUE, PRED, labels=["c", "b", "a"])
    assert matrix.labels == ["c", "b", "a"]
    assert matrix.matrix == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]
    assert matrix.count("a", "b") == 1 and matrix.total == 6


def test_unexpected_values_are_appended_after_the_vocabulary():
    matrix = confusion_matrix(["a", "b"], ["a", "zzz"], labels=["b", "a"])
    assert matrix.labels == ["b", "a", "zzz"]
    assert matrix.count("b", "zzz") == 1


def test_a_class_nobody_labelled_or_predicted_does_not_lower_macro_f1():
    assert macro_f1(["a", "b"], ["a", "b"]) == 1.0
    rows = per_class_counts(["a", "b"], ["a", "b"], labels=["a", "b", "never"])
    assert rows[-1].support == rows[-1].predicted == 0  # listed, but macro_f1 ignores it


def test_adjacent_bin_accuracy_on_age_bins():
    # truth      21-30  21-30  31-40  51-60  18-20
    # predicted  21-30  31-40  51-60  41-50  31-40
    # distance     0      1      2      1      2   -> exact 1/5, adjacent 3/5
    truth = ["21-30", "21-30", "31-40", "51-60", "18-20"]
    predicted = ["21-30", "31-40", "51-60", "41-50", "31-40"]
    assert accuracy(truth, predicted) == exactly(Fraction(1, 5))
    assert adjacent_accuracy(truth, predicted, AGE_BINS) == exactly(Fraction(3, 5))


def test_adjacent_bin_accuracy_counts_an_off_scale_prediction_as_wrong():
    assert adjacent_accuracy(["18-20", "21-30"], ["unknown", "18-20"], AGE_BINS) == 0.5
    with pytest.raises(ValueError, match="not on the ordinal scale"):
        adjacent_accuracy(["teen"], ["18-20"], AGE_BINS)


def test_top_k_accuracy_from_ranked_probabilities():
    probabilities = [
        {"x": 0.6, "y": 0.3, "z": 0.1},  # truth x: top-1
        {"x": 0.5, "y": 0.2, "z": 0.3},  # truth z: rank 2
        {"x": 0.2, "y": 0.2, "z": 0.6},  # truth y: rank 3 (tie with x broken by name: x first)
    ]
    rankings = [ranked(p) for p in probabilities]
    truth = ["x", "z", "y"]
    assert rankings[2] == ["z", "x", "y"]
    assert top_k_accuracy(truth, rankings, 1) == exactly(Fraction(1, 3))
    assert top_k_accuracy(truth, rankings, 2) == exactly(Fraction(2, 3))
    assert top_k_accuracy(truth, rankings, 5) == 1.0


def test_empty_inputs_give_nan_and_mismatched_lengths_raise():
    assert math.isnan(accuracy([], []))
    with pytest.raises(ValueError, match="2 labels but 1 predictions"):
        accuracy(["a", "b"], ["a"])
