"""The drop sensor: adds a partition per ready drop and requests one run of the whole chain.

Besides the drop root it reads the warehouse (drops already ingested with the same files are not
run again; drops it lost or found changed are run again) and the instance's runs of the
pipeline (one run per drop at a time; a drop whose latest run failed or was cancelled, with
Dagster's run retries exhausted, is named on every tick and re-requested; see README). Every
tick ends with a one-line status, the skip reason of the tick page when nothing is requested.
"""

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import dagster as dg

from core.drops import (
    WAREHOUSE_BUSY,
    ReadyDrop,
    Timing,
    WatcherState,
    ingested_files,
    plan_tick,
    read_view,
    status_line,
)
from orchestration.jobs import PIPELINE_JOB_NAME, image_pipeline_job
from orchestration.partitions import image_drops
from orchestration.settings import Settings
from resources.drop_folder import DropFolderResource
from resources.warehouse import WarehouseResource

SENSOR_NAME = "image_drop_sensor"
PARTITION_TAG = "dagster/partition"
WILL_RETRY_TAG = "dagster/will_retry"  # set by Dagster on a failed run when run retries are on
ATTEMPT_TAG = "image_pipeline/attempt"
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
ASSET_JOB_PREFIX = "__ASSET_JOB"  # what Dagster names a launch from an asset page
# Dagster cuts a sensor tick at 60 s: the sensor's reads wait this long for the warehouse lock,
# then the tick says the warehouse is busy and looks again at the next one.
SENSOR_LOCK_TIMEOUT_S = 5.0
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _is_pipeline_run(run: dg.DagsterRun) -> bool:
    return run.job_name == PIPELINE_JOB_NAME or run.job_name.startswith(ASSET_JOB_PREFIX)


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
            ATTEMPT_TAG: str(drop.attempt),
        },
    )


def _loose_files_of(run: dg.DagsterRun) -> list[str]:
    files = run.run_config.get("ops", {}).get("images", {}).get("config", {}).get("files", [])
    return [str(f) for f in files]


def read_run_outcomes(
    instance: dg.DagsterInstance, state: WatcherState, now: float, log: dg.DagsterLogManager
) -> None:
    """Fold the pipeline's runs that ended since the last tick into the cursor, oldest first.

    Runs of the pipeline job and launches from an asset page (`__ASSET_JOB`) both count. A
    success clears a drop's failure; a failure counts only once Dagster will not retry it (its
    `dagster/will_retry` tag is not `true`; the retry run reports later in its own right); a
    cancelled run counts as a failure, since Dagster never retries one.
    """
    after = (
        datetime.fromtimestamp(state.runs_checked_at, tz=UTC)
        if state.runs_checked_at is not None
        else None
    )
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.SUCCESS,
                dg.DagsterRunStatus.FAILURE,
                dg.DagsterRunStatus.CANCELED,
            ],
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
        if not drop_id or not _is_pipeline_run(run):
            continue
        if run.status == dg.DagsterRunStatus.SUCCESS:
            state.record_success(drop_id, _loose_files_of(run))
        elif run.tags.get(WILL_RETRY_TAG, "").lower() == "true":
            log.info(f"drop {drop_id}: run {run.run_id} failed; Dagster will retry it")
        else:
            attempt = int(run.tags.get(ATTEMPT_TAG, "0") or 0)
            state.record_failure(drop_id, run.run_id, now, _loose_files_of(run), attempt)


def runs_in_progress(instance: dg.DagsterInstance) -> dict[str, str]:
    """Drop -> a run of it that is queued or running: no second run starts beside it."""
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=IN_PROGRESS))
    return {
        run.tags[PARTITION_TAG]: run.run_id
        for run in (record.dagster_run for record in records)
        if PARTITION_TAG in run.tags and _is_pipeline_run(run)
    }


def unused_run_key(instance: dg.DagsterInstance, drop: ReadyDrop) -> ReadyDrop:
    """The drop with a run_key this sensor never used: Dagster skips a repeated one silently."""
    for _ in range(100):
        used = instance.get_runs(
            filters=dg.RunsFilter(tags={RUN_KEY_TAG: drop.run_key, SENSOR_NAME_TAG: SENSOR_NAME}),
            limit=1,
        )
        if not used:
            return drop
        drop = replace(drop, attempt=drop.attempt + 1, suffix="")
    return drop


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
            "are not run again; drops the warehouse lost or found changed are run again; one run "
            "per drop at a time; drops whose last run failed are named and re-requested. Each "
            "tick's skip reason says what the sensor watches and waits for."
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
        running = runs_in_progress(context.instance)
        store = warehouse.get(lock_timeout_s=min(warehouse.lock_timeout_s, SENSOR_LOCK_TIMEOUT_S))
        view, note = read_view(store, sorted(state.folders), state.loose_ingested)
        plan = plan_tick(
            drop_folder.path,
            state,
            now=now,
            timing=timing,
            # Busy a moment ago: do not wait for the lock a second time in this tick.
            known_files=(lambda drops: ingested_files(store, drops))
            if not note.startswith(WAREHOUSE_BUSY)
            else (lambda _drops: None),
            running=running,
            view=view,
        )
        for name, why in plan.waiting.items():
            context.log.info(f"waiting for {name}: {why}")
        for name, why in plan.ignored.items():
            context.log.warning(f"ignoring {name}: {why}")
        for name, why in plan.already_ingested.items():
            context.log.info(f"drop {name}: {why}; no run")
        for name, why in plan.failed.items():
            context.log.warning(f"drop {name}: {why}")
        status = status_line(plan, warehouse_note=note)
        context.log.info(status)
        cursor = plan.state.to_cursor()
        if not plan.ready:
            return dg.SensorResult(skip_reason=status, cursor=cursor)
        ready = [unused_run_key(context.instance, drop) for drop in plan.ready]
        known = set(context.instance.get_dynamic_partitions(image_drops.name))
        new_keys = [drop.drop_id for drop in ready if drop.drop_id not in known]
        for drop in ready:
            context.log.info(
                f"drop {drop.drop_id} is ready ({drop.reason}, {drop.summary.count} files)"
            )
        return dg.SensorResult(
            run_requests=[run_request(drop) for drop in ready],
            dynamic_partitions_requests=[image_drops.build_add_request(new_keys)]
            if new_keys
            else [],
            cursor=cursor,
        )

    return image_drop_sensor
