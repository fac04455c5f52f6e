"""The drop sensor: adds a partition per ready drop and requests one run of the whole chain.

Besides the drop root it reads the warehouse (drops already ingested with the same files are not
run again) and the instance's finished runs of the job (a drop whose latest run failed, with
Dagster's run retries exhausted, is named on every tick and re-requested; see README).
"""

import time
from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg

from core.drops import ReadyDrop, Timing, WatcherState, ingested_files, plan_tick
from orchestration.jobs import PIPELINE_JOB_NAME, image_pipeline_job
from orchestration.partitions import image_drops
from orchestration.settings import Settings
from resources.drop_folder import DropFolderResource
from resources.warehouse import WarehouseResource

SENSOR_NAME = "image_drop_sensor"
PARTITION_TAG = "dagster/partition"
WILL_RETRY_TAG = "dagster/will_retry"  # set by Dagster on a failed run when run retries are on


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


def _loose_files_of(run: dg.DagsterRun) -> list[str]:
    files = run.run_config.get("ops", {}).get("images", {}).get("config", {}).get("files", [])
    return [str(f) for f in files]


def read_run_outcomes(
    instance: dg.DagsterInstance, state: WatcherState, now: float, log: dg.DagsterLogManager
) -> None:
    """Fold the job's runs that finished since the last tick into the cursor, oldest first.

    A success clears a drop's failure; a failure counts only once Dagster will not retry it
    (its `dagster/will_retry` tag is not `true`); the retry run reports later in its own right.
    """
    after = (
        datetime.fromtimestamp(state.runs_checked_at, tz=UTC)
        if state.runs_checked_at is not None
        else None
    )
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=PIPELINE_JOB_NAME,
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
            updated_after=after,
        ),
        order_by="update_timestamp",
        ascending=True,
    )
    for record in records:
        run = record.dagster_run
        state.runs_checked_at = max(
            state.runs_checked_at or 0.0, record.update_timestamp.timestamp()
        )
        drop_id = run.tags.get(PARTITION_TAG)
        if not drop_id:
            continue
        if run.status == dg.DagsterRunStatus.SUCCESS:
            state.record_success(drop_id)
        elif run.tags.get(WILL_RETRY_TAG, "").lower() == "true":
            log.info(f"drop {drop_id}: run {run.run_id} failed; Dagster will retry it")
        else:
            state.record_failure(drop_id, run.run_id, now, _loose_files_of(run))


def build_drop_sensor(
    settings: Settings, clock: Callable[[], float] = time.time
) -> dg.SensorDefinition:
    status = (
        dg.DefaultSensorStatus.RUNNING
        if settings.sensor_running_by_default
        else dg.DefaultSensorStatus.STOPPED
    )
    timing = Timing(
        quiet_period_s=settings.quiet_period_s,
        loose_max_wait_s=settings.loose_max_wait_s,
        rewalk_s=settings.rewalk_s,
        retry_failed_s=settings.retry_failed_s,
    )

    @dg.sensor(
        name=SENSOR_NAME,
        job=image_pipeline_job,
        minimum_interval_seconds=settings.sensor_interval_s,
        default_status=status,
        description=(
            "Watches the drop root. A sub-folder becomes a drop once unchanged for "
            f"{settings.quiet_period_s:.0f}s or when it holds a _READY file; loose files at the "
            "root are grouped into a time-named drop. Drops already ingested with the same files "
            "are not run again; drops whose last run failed are named and re-requested."
        ),
    )
    def image_drop_sensor(
        context: dg.SensorEvaluationContext,
        drop_folder: DropFolderResource,
        warehouse: WarehouseResource,
    ) -> dg.SensorResult:
        state = WatcherState.from_cursor(context.cursor)
        now = clock()
        read_run_outcomes(context.instance, state, now, context.log)
        store = warehouse.get()
        plan = plan_tick(
            drop_folder.path,
            state,
            now=now,
            timing=timing,
            known_files=lambda drops: ingested_files(store, drops),
        )
        for name, why in plan.waiting.items():
            context.log.info(f"waiting for {name}: {why}")
        for name, why in plan.ignored.items():
            context.log.warning(f"ignoring {name}: {why}")
        for name, why in plan.already_ingested.items():
            context.log.info(f"drop {name}: {why}; no run")
        for name, why in plan.failed.items():
            context.log.warning(f"drop {name}: {why}")
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
