"""Label-distribution drift of one partition against the partitions before it.

Both statistics compare category counts. Empty bins get a small pseudo-count (additive smoothing)
so a label seen now but never before, or the reverse, gives a large but finite value instead of
infinity or a division by zero.

Rules of thumb for PSI: < 0.1 no meaningful shift, 0.1-0.25 moderate, > 0.25 large; the default
threshold warns at 0.25.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pydantic import BaseModel

DEFAULT_PSI_THRESHOLD = 0.25
DEFAULT_SMOOTHING = 0.5  # pseudo-count added to every bin of both distributions


class DriftResult(BaseModel):
    psi: float
    chi_square: float
    degrees_of_freedom: int
    categories: list[str]
    current: dict[str, int]
    reference: dict[str, int]
    threshold: float
    drifted: bool


def _categories(
    current: Mapping[str, int], reference: Mapping[str, int], categories: Sequence[str] | None
) -> list[str]:
    order = list(categories or [])
    return order + sorted((set(current) | set(reference)) - set(order))


def _proportions(counts: Mapping[str, int], categories: list[str], smoothing: float) -> list[float]:
    smoothed = [counts.get(c, 0) + smoothing for c in categories]
    total = sum(smoothed)
    return [value / total for value in smoothed]


def population_stability_index(
    current: Mapping[str, int],
    reference: Mapping[str, int],
    categories: Sequence[str] | None = None,
    *,
    smoothing: float = DEFAULT_SMOOTHING,
) -> float:
    """PSI = sum over bins of (p_cur - p_ref) * ln(p_cur / p_ref), on smoothed proportions."""
    order = _categories(current, reference, categories)
    if smoothing <= 0:
        raise ValueError("smoothing must be positive so empty bins stay finite")
    p = _proportions(current, order, smoothing)
    q = _proportions(reference, order, smoothing)
    return sum((a - b) * math.log(a / b) for a, b in zip(p, q, strict=True))


def chi_square(
    current: Mapping[str, int],
    reference: Mapping[str, int],
    categories: Sequence[str] | None = None,
    *,
    smoothing: float = DEFAULT_SMOOTHING,
) -> tuple[float, int]:
    """Goodness of fit of the current counts to the reference proportions: (statistic, dof)."""
    order = _categories(current, reference, categories)
    expected_share = _proportions(reference, order, smoothing)
    total = sum(current.get(c, 0) for c in order)
    statistic = sum(
        (current.get(c, 0) - total * share) ** 2 / (total * share)
        for c, share in zip(order, expected_share, strict=True)
        if total
    )
    return statistic, max(len(order) - 1, 0)


def compare(
    current: Mapping[str, int],
    reference: Mapping[str, int],
    categories: Sequence[str] | None = None,
    *,
    threshold: float = DEFAULT_PSI_THRESHOLD,
    smoothing: float = DEFAULT_SMOOTHING,
) -> DriftResult:
    """PSI and chi-square together; `drifted` when PSI exceeds `threshold`."""
    order = _categories(current, reference, categories)
    psi = population_stability_index(current, reference, order, smoothing=smoothing)
    statistic, dof = chi_square(current, reference, order, smoothing=smoothing)
    return DriftResult(
        psi=psi,
        chi_square=statistic,
        degrees_of_freedom=dof,
        categories=order,
        current={c: int(current.get(c, 0)) for c in order},
        reference={c: int(reference.get(c, 0)) for c in order},
        threshold=threshold,
        drifted=psi > threshold,
    )
