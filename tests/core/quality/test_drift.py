"""Drift statistics reproduce hand computations and stay finite on empty bins."""

from __future__ import annotations

import math

import pytest

from core.quality.drift import chi_square, compare, population_stability_index


def test_psi_and_chi_square_match_the_hand_computation():
    # smoothing 0.5: current (3.5, 1.5)/5 = (.7, .3); reference (.3, .7)
    # PSI = .4 ln(.7/.3) - .4 ln(.3/.7) = .8 ln(7/3)
    # chi2 over 4 observations: expected (1.2, 2.8): 1.8^2/1.2 + 1.8^2/2.8 = 27/7
    current, reference = {"a": 3, "b": 1}, {"a": 1, "b": 3}
    assert population_stability_index(current, reference) == pytest.approx(0.8 * math.log(7 / 3))
    statistic, dof = chi_square(current, reference)
    assert statistic == pytest.approx(27 / 7) and dof == 1


def test_the_same_distribution_does_not_drift():
    assert population_stability_index({"a": 10, "b": 20}, {"a": 10, "b": 20}) == 0.0
    result = compare({"a": 10, "b": 20}, {"a": 100, "b": 200}, ["a", "b", "c"])
    assert result.psi < 0.05  # only the smoothing of the empty bin `c` differs
    assert not result.drifted
    assert result.current == {"a": 10, "b": 20, "c": 0}


def test_disjoint_labels_drift_with_a_finite_statistic():
    result = compare({"a": 40}, {"b": 40}, threshold=0.25)
    assert math.isfinite(result.psi) and result.psi > 0.25
    assert result.drifted
    assert result.degrees_of_freedom == 1


def test_smoothing_must_be_positive():
    with pytest.raises(ValueError, match="smoothing"):
        population_stability_index({"a": 1}, {"b": 1}, smoothing=0)
