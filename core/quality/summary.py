"""Compact tables for the demo report: latest check outcomes and the latest evaluation."""

from __future__ import annotations

import polars as pl

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
    """The newest evaluation run, one row per labelled set, field, source and model, metrics as
    columns."""
    return warehouse.query(
        """
        WITH latest AS (
            SELECT run_id FROM evaluations ORDER BY evaluated_at DESC LIMIT 1
        )
        SELECT labelled_set, field, source, model_id, max(n) AS n,
               round(max(value) FILTER (metric = 'coverage'), 3) AS coverage,
               round(max(value) FILTER (metric = 'accuracy'), 3) AS accuracy,
               round(max(value) FILTER (metric = 'macro_f1'), 3) AS macro_f1,
               round(max(value) FILTER (metric = 'adjacent_accuracy'), 3) AS adjacent_accuracy,
               round(max(value) FILTER (metric = 'top1_accuracy'), 3) AS top1,
               round(max(value) FILTER (metric = 'top5_accuracy'), 3) AS top5,
               bool_or(starts_with(lower(model_id), 'standin')) AS standin
        FROM evaluations WHERE run_id IN (SELECT run_id FROM latest)
        GROUP BY labelled_set, field, source, model_id
        ORDER BY labelled_set, field, CASE source WHEN 'clip_zero_shot' THEN 0 WHEN 'vlm' THEN 1 ELSE 2 END,
                 model_id
        """
    )
