"""The code location: every asset, check, job, sensor and resource, assembled in one place."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dagster as dg

from orchestration.jobs import PIPELINE_ASSETS, PIPELINE_EXECUTOR, image_pipeline_job
from orchestration.resources import build_resources
from orchestration.settings import Settings
from sensors.drop_sensor import build_drop_sensor


def build_definitions(
    settings: Settings | None = None,
    *,
    clock: Callable[[], float] = time.time,
    resources: dict[str, Any] | None = None,
) -> dg.Definitions:
    """`resources` replace the environment's (make sglang-demo launches its own server)."""
    settings = settings or Settings.from_env()
    return dg.Definitions(
        assets=PIPELINE_ASSETS,
        jobs=[image_pipeline_job],
        sensors=[build_drop_sensor(settings, clock)],
        resources=build_resources(settings) | (resources or {}),
        # Materialize on an asset page launches Dagster's implicit `__ASSET_JOB` (the UI picks
        # the first job name, and it sorts first); it runs like the pipeline job this way.
        executor=PIPELINE_EXECUTOR,
    )


defs = build_definitions()
