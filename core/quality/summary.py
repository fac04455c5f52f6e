"""Compact tables for the demo report: latest check outcomes and the latest evaluation."""

from __future__ import annotations

import polars as pl

from core.quality.evaluation_store import current_results
from core.warehouse import Warehouse


def latest_check_outcomes(warehouse: Warehouse) -> pl.DataFrame:
    """The most recent outcome of every (asset, check, partition), failures first."""
    return warehouse.query(
        """
        SELECT asset, check_name, partition, passed, severity, round(value, 4) AS value,
               threshold, details->>'$.summary' AS summary
        FROM quality_results
        QUALIFY row_number() OVER (
            PARTITION BY asset, check_name, partition ORDER BY evaluated_at DESC) = 1
        ORDER BY passed, asset, check_name, partition
        """
    )


def latest_evaluation(warehouse: Warehouse) -> pl.DataFrame:
    """The current evaluation, one row per labelled set, field, source and model, metrics as
    columns (each result as of the run that last saw new inputs for it)."""
    return current_results(warehouse).drop("run_id")
