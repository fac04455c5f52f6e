"""The drop sensor: adds a partition per ready drop and requests one run of the whole chain."""

import time
from collections.abc import Callable

import dagster as dg

from core.drops import ReadyDrop, WatcherState, plan_tick
from orchestration.jobs import image_pipeline_job
from orchestration.partitions import image_drops
from orchestration.settings import Settings
from resources.drop_folder import DropFolderResource

SENSOR_NAME = "image_drop_sensor"


def run_request(drop: ReadyDrop) -> dg.RunRequest:
    run_config: dict = {}
    if drop.kind == "loose":
        run_config = {"ops": {"images": {"config": {"files": list(drop.files)}}}}
    return dg.RunRequest(
        run_key=drop.run_key,
        partition_key=drop.drop_id,
        run_config=run_config,
        tags={
            "image_pipeline/drop_kind": drop.kind,
            "image_pipeline/files": str(drop.summary.count),
        },
    )


def build_drop_sensor(
    settings: Settings, clock: Callable[[], float] = time.time
) -> dg.SensorDefinition:
    status = (
        dg.DefaultSensorStatus.RUNNING
        if settings.sensor_running_by_default
        else dg.DefaultSensorStatus.STOPPED
    )

    @dg.sensor(
        name=SENSOR_NAME,
        job=image_pipeline_job,
        minimum_interval_seconds=settings.sensor_interval_s,
        default_status=status,
        description=(
            "Watches the drop root. A sub-folder becomes a drop once unchanged for "
            f"{settings.quiet_period_s:.0f}s or when it holds a _READY file; loose files at the "
            "root are grouped into a time-named drop."
        ),
    )
    def image_drop_sensor(
        context: dg.SensorEvaluationContext, drop_folder: DropFolderResource
    ) -> dg.SensorResult:
        state = WatcherState.from_cursor(context.cursor)
        plan = plan_tick(
            drop_folder.path, state, now=clock(), quiet_period_s=settings.quiet_period_s
        )
        for name, why in plan.waiting.items():
            context.log.info(f"waiting for {name}: {why}")
        for name, why in plan.ignored.items():
            context.log.warning(f"ignoring {name}: {why}")
        if not plan.ready:
            return dg.SensorResult(skip_reason="no drop is ready", cursor=plan.state.to_cursor())
        known = set(context.instance.get_dynamic_partitions(image_drops.name))
        new_keys = [drop.drop_id for drop in plan.ready if drop.drop_id not in known]
        for drop in plan.ready:
            context.log.info(
                f"drop {drop.drop_id} is ready ({drop.reason}, {drop.summary.count} files)"
            )
        return dg.SensorResult(
            run_requests=[run_request(drop) for drop in plan.ready],
            dynamic_partitions_requests=[image_drops.build_add_request(new_keys)]
            if new_keys
            else [],
            cursor=plan.state.to_cursor(),
        )

    return image_drop_sensor
