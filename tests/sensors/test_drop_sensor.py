"""The drop sensor, evaluated the way the daemon does it: cursor in, partitions and runs out."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.defs_state.base import DefsStateStorage
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG

from core.ingest.ingest import DropIngestor, IngestReport
from core.ingest.scan import DropRef
from core.warehouse import Warehouse, locking
from orchestration.definitions import build_definitions
from orchestration.jobs import PIPELINE_JOB_NAME
from orchestration.resources import build_resources
from orchestration.settings import Settings
from sensors.drop_sensor import SENSOR_NAME
from tests.conftest import copy_samples
from tests.fixtures.bad_inputs import jpeg_bytes


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Daemon:
    """Ticks the sensor like the daemon: the cursor of one tick is the input of the next."""

    def __init__(self, settings: Settings, instance: dg.DagsterInstance, clock: Clock) -> None:
        self.settings = settings
        self.defs = build_definitions(settings, clock=clock)
        self.resources = build_resources(settings)
        self.sensor = self.defs.resolve_sensor_def(SENSOR_NAME)
        self.instance = instance
        self.clock = clock
        self.cursor: str | None = None

    def tick(self, *, after_s: float = 0.0) -> dg.SensorResult:
        self.clock.now += after_s
        # Entered and exited like the daemon's: the context opens an instance from the ref, and
        # that instance's state storage stays the process's current one until the context exits
        # (left open, a later definitions load found it collected: "undefined DagsterInstance
        # weakref", once in CI).
        with dg.build_sensor_context(
            instance_ref=self.instance.get_ref(),
            definitions=self.defs,
            cursor=self.cursor,
            resources={
                "drop_folder": self.resources["drop_folder"],
                "warehouse": self.resources["warehouse"],
            },
        ) as context:
            data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        for request in data.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        return data

    def ingest(self, request: dg.RunRequest) -> IngestReport:
        """What the run's `images` step writes, without the model steps (they are not needed
        for what the sensor reads back)."""
        files = request.run_config.get("ops", {}).get("images", {}).get("config", {}).get("files")
        key = request.partition_key or ""
        drop = DropRef.loose(key, files) if files else DropRef.folder(key)
        warehouse = Warehouse(self.settings.warehouse_path)
        return DropIngestor(warehouse, self.settings.drop_root).ingest(drop)

    def run(self, request: dg.RunRequest, **kwargs) -> dg.ExecuteInProcessResult:
        """Launch the request as the daemon does: tagged with its run_key, and never twice
        (the daemon skips a run_key the sensor already used, without a word)."""
        assert not self.instance.get_runs(
            filters=dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key}), limit=1
        ), f"the daemon would skip run_key {request.run_key}: it was used before"
        job = self.defs.resolve_job_def(PIPELINE_JOB_NAME)
        tags = {
            **kwargs.pop("tags", request.tags),
            RUN_KEY_TAG: request.run_key or "",
            SENSOR_NAME_TAG: SENSOR_NAME,
        }
        return job.execute_in_process(
            partition_key=request.partition_key,
            run_config=request.run_config,
            instance=self.instance,
            tags=tags,
            **kwargs,
        )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def daemon(settings: Settings, instance: dg.DagsterInstance, clock: Clock) -> Daemon:
    return Daemon(settings, instance, clock)


@pytest.fixture
def patient_daemon(settings: Settings, instance: dg.DagsterInstance, clock: Clock) -> Daemon:
    """A sensor that waits for 30 quiet seconds before it trusts a folder."""
    return Daemon(settings.model_copy(update={"quiet_period_s": 30.0}), instance, clock)


def test_a_new_folder_becomes_a_partition_and_one_run(daemon: Daemon, drop_root: Path):
    copy_samples(drop_root, "holiday")
    data = daemon.tick()
    assert [r.partition_key for r in data.run_requests] == ["holiday"]
    assert data.run_requests[0].run_key.startswith("holiday:")
    assert data.dynamic_partitions_requests[0].partition_keys == ["holiday"]
    assert daemon.run(data.run_requests[0]).success


def test_a_folder_still_being_written_is_not_triggered(patient_daemon: Daemon, drop_root: Path):
    folder = copy_samples(drop_root, "incoming", names=["chelsea.jpg"])
    assert patient_daemon.tick().run_requests == []
    (folder / "more.jpg").write_bytes(jpeg_bytes(seed=1))
    assert patient_daemon.tick(after_s=40).run_requests == []  # changed since the last look
    data = patient_daemon.tick(after_s=31)
    assert [r.partition_key for r in data.run_requests] == ["incoming"]


def test_a_ready_marker_triggers_without_waiting(patient_daemon: Daemon, drop_root: Path):
    folder = copy_samples(drop_root, "marked", names=["coffee.jpg"])
    (folder / "_READY").touch()
    assert [r.partition_key for r in patient_daemon.tick().run_requests] == ["marked"]


def test_loose_files_are_grouped_into_one_time_named_drop(daemon: Daemon, drop_root: Path):
    for index in range(3):
        (drop_root / f"loose-{index}.jpg").write_bytes(jpeg_bytes(seed=index))
    data = daemon.tick()
    (request,) = data.run_requests
    assert request.partition_key.startswith("_loose-")
    assert request.run_config["ops"]["images"]["config"]["files"] == [
        "loose-0.jpg",
        "loose-1.jpg",
        "loose-2.jpg",
    ]
    result = daemon.run(request)
    assert result.success
    assert daemon.tick(after_s=60).run_requests == []  # assigned files are not grouped again
    (drop_root / "loose-3.jpg").write_bytes(jpeg_bytes(seed=3))
    (later,) = daemon.tick(after_s=60).run_requests
    assert later.run_config["ops"]["images"]["config"]["files"] == ["loose-3.jpg"]
    assert later.partition_key != request.partition_key


def test_a_tick_leaves_the_instance_state_storage_current(daemon: Daemon, instance, drop_root):
    copy_samples(drop_root, "done", names=["rocket.jpg"])
    daemon.tick()
    assert DefsStateStorage.get() is instance.defs_state_storage


def test_a_restarted_daemon_keeps_its_cursor_and_does_not_retrigger(
    settings, instance, clock, drop_root: Path
):
    copy_samples(drop_root, "done", names=["rocket.jpg"])
    first = Daemon(settings, instance, clock)
    assert len(first.tick().run_requests) == 1
    cursor = first.cursor  # what the daemon stored in the instance
    del first
    gc.collect()  # the first daemon and what its ticks made are gone, as after a restart
    restarted = Daemon(settings, instance, clock)
    restarted.cursor = cursor
    data = restarted.tick(after_s=3600)
    assert data.run_requests == []
    assert json.loads(restarted.cursor or "{}")["folders"].keys() == {"done"}


def test_files_added_to_an_old_drop_trigger_a_run_that_only_works_on_them(
    daemon: Daemon, drop_root: Path, warehouse
):
    folder = copy_samples(drop_root, "album", names=["astronaut.jpg", "coffee.jpg"])
    (first,) = daemon.tick().run_requests
    assert daemon.run(first).success
    (folder / "new.jpg").write_bytes(jpeg_bytes(seed=9))
    (second,) = daemon.tick(after_s=60).run_requests
    assert second.partition_key == "album" and second.run_key != first.run_key
    result = daemon.run(second)
    metadata = result.asset_materializations_for_node("images")[0].metadata
    assert metadata["files_processed"].value == 1
    assert metadata["files_unchanged"].value == 2


def test_removing_files_alone_does_not_retrigger(daemon: Daemon, drop_root: Path):
    folder = copy_samples(drop_root, "shrinking", names=["astronaut.jpg", "coffee.jpg"])
    (request,) = daemon.tick().run_requests
    daemon.ingest(request)
    (folder / "coffee.jpg").unlink()
    assert daemon.tick(after_s=60).run_requests == []


def test_empty_and_hidden_folders_are_not_drops(daemon: Daemon, drop_root: Path):
    (drop_root / "empty").mkdir()
    (drop_root / ".cache").mkdir()
    (drop_root / ".cache" / "x.jpg").write_bytes(jpeg_bytes())
    (drop_root / "_scratch").mkdir()
    (drop_root / "_scratch" / "x.jpg").write_bytes(jpeg_bytes())
    data = daemon.tick()
    assert data.run_requests == []
    assert data.skip_message == "watching 1 drop; empty waiting: empty folder"


def _old_file(path: Path, seed: int, mtime: float = 1_000_000_000.0) -> None:
    """A file as `cp -p` / `rsync -t` / a camera import leaves it: new content, an old mtime."""
    path.write_bytes(jpeg_bytes(seed=seed))
    os.utime(path, (mtime, mtime))


def test_replacing_files_with_one_older_file_triggers(daemon: Daemon, drop_root: Path):
    folder = copy_samples(drop_root, "swap", names=["astronaut.jpg", "coffee.jpg"])
    (first,) = daemon.tick().run_requests
    daemon.ingest(first)
    (folder / "astronaut.jpg").unlink()
    (folder / "coffee.jpg").unlink()
    _old_file(folder / "older.jpg", seed=5)  # fewer files, and no mtime newer than before
    (second,) = daemon.tick(after_s=60).run_requests
    assert second.partition_key == "swap" and second.run_key != first.run_key
    assert daemon.ingest(second).files_processed == 1


def test_a_file_rewritten_with_an_older_mtime_triggers(daemon: Daemon, drop_root: Path):
    folder = copy_samples(drop_root, "rewrite", names=["astronaut.jpg", "coffee.jpg"])
    (first,) = daemon.tick().run_requests
    daemon.ingest(first)
    _old_file(folder / "coffee.jpg", seed=6)  # same path, other size and an older mtime
    (second,) = daemon.tick(after_s=60).run_requests
    assert second.partition_key == "rewrite"


def test_a_trickle_of_loose_files_is_not_starved(
    settings: Settings, instance: dg.DagsterInstance, clock: Clock, drop_root: Path
):
    """One file every 20 s with a 30 s quiet period: the quiet ones leave within the max wait."""
    daemon = Daemon(
        settings.model_copy(update={"quiet_period_s": 30.0, "loose_max_wait_s": 60.0}),
        instance,
        clock,
    )
    requests: list[dg.RunRequest] = []
    for index in range(10):  # 200 s of arrivals
        (drop_root / f"t{index}.jpg").write_bytes(jpeg_bytes(seed=20 + index))
        requests += daemon.tick(after_s=20 if index else 0).run_requests
    assert requests, "no loose drop while files kept arriving"
    files = requests[0].run_config["ops"]["images"]["config"]["files"]
    assert "t0.jpg" in files and "t9.jpg" not in files  # quiet ones went, the newest waits
    seen = [f for r in requests for f in r.run_config["ops"]["images"]["config"]["files"]]
    assert len(seen) == len(set(seen))  # no file is in two drops


def test_a_drop_already_ingested_by_hand_is_not_run_again(
    daemon: Daemon, drop_root: Path, warehouse
):
    """`make demo` ingests `samples` in its own run; the sensor's first tick must not redo it."""
    copy_samples(drop_root, "samples")
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("samples"))
    data = daemon.tick()
    assert data.run_requests == []
    assert daemon.tick(after_s=60).run_requests == []
    (drop_root / "samples" / "extra.jpg").write_bytes(jpeg_bytes(seed=31))
    (request,) = daemon.tick(after_s=60).run_requests  # a real change still triggers
    assert request.partition_key == "samples"


def test_a_folder_filled_with_old_mtimes_does_not_look_quiet(
    patient_daemon: Daemon, drop_root: Path
):
    """`cp -p` / `rsync -t`: every file arrives with an mtime long past, 20 s apart."""
    folder = drop_root / "copying"
    folder.mkdir()
    for index in range(4):
        _old_file(folder / f"c{index}.jpg", seed=40 + index)
        assert patient_daemon.tick(after_s=20 if index else 0).run_requests == []
    (request,) = patient_daemon.tick(after_s=31).run_requests
    assert request.partition_key == "copying"


def test_the_cursor_forgets_folders_that_left_the_root(daemon: Daemon, drop_root: Path):
    copy_samples(drop_root, "kept", names=["rocket.jpg"])
    gone = copy_samples(drop_root, "gone", names=["coffee.jpg"])
    assert len(daemon.tick().run_requests) == 2
    shutil.rmtree(gone)
    daemon.tick(after_s=60)
    assert "gone" not in (daemon.cursor or "") and "kept" in (daemon.cursor or "")


@pytest.fixture
def retrying_instance() -> Iterator[dg.DagsterInstance]:
    """An instance with Dagster's run retries on, as dagster.yaml configures them."""
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True}}) as test_instance:
        yield test_instance


@pytest.fixture
def failing_daemon(settings: Settings, retrying_instance, clock: Clock, tmp_path: Path) -> Daemon:
    """Runs fail on purpose: the warehouse path is a directory, so `images` cannot open it."""
    blocked = tmp_path / "blocked.duckdb"
    blocked.mkdir()
    failing = settings.model_copy(update={"warehouse_path": blocked, "retry_failed_s": 600.0})
    return Daemon(failing, retrying_instance, clock)


def test_a_failed_run_with_retries_left_is_left_to_dagster(failing_daemon: Daemon, drop_root: Path):
    copy_samples(drop_root, "flaky", names=["rocket.jpg"])
    (request,) = failing_daemon.tick().run_requests
    result = failing_daemon.run(request, raise_on_error=False)
    assert not result.success
    run = failing_daemon.instance.get_run_by_id(result.run_id)
    assert run.tags["dagster/will_retry"] == "true"  # the job's retry tags at work
    assert failing_daemon.tick(after_s=3600).run_requests == []  # Dagster retries, not us


def test_a_failed_run_is_named_and_re_requested(
    failing_daemon: Daemon, drop_root: Path, capfd: pytest.CaptureFixture[str]
):
    folder = copy_samples(drop_root, "stranded", names=["rocket.jpg"])
    (request,) = failing_daemon.tick().run_requests
    # Retries exhausted: what Dagster tags the last failed run of a run group with.
    result = failing_daemon.run(
        request, raise_on_error=False, tags={**request.tags, "dagster/max_retries": "0"}
    )
    assert not result.success
    assert failing_daemon.instance.get_run_by_id(result.run_id).tags["dagster/will_retry"] == (
        "false"
    )
    capfd.readouterr()
    assert failing_daemon.tick(after_s=60).run_requests == []
    logged = "".join(capfd.readouterr())
    assert f"drop stranded: last run {result.run_id} failed" in logged  # the tick log names it
    (retry,) = failing_daemon.tick(after_s=600).run_requests  # the documented schedule
    assert retry.partition_key == "stranded" and retry.run_key != request.run_key
    failed_again = failing_daemon.run(
        retry, raise_on_error=False, tags={**retry.tags, "dagster/max_retries": "0"}
    )
    assert not failed_again.success
    assert failing_daemon.tick(after_s=60).run_requests == []
    (folder / "fixed.jpg").write_bytes(jpeg_bytes(seed=50))  # its files change: at once
    (changed,) = failing_daemon.tick(after_s=1).run_requests
    assert changed.run_key not in {request.run_key, retry.run_key}


def test_every_tick_says_what_the_sensor_waits_for(patient_daemon: Daemon, drop_root: Path):
    """The skip reason is what the sensor's tick page shows: one line of what it watches."""
    copy_samples(drop_root, "incoming", names=["chelsea.jpg"])
    (drop_root / "empty").mkdir()
    first = patient_daemon.tick()
    assert first.skip_message == (
        "watching 2 drops; empty waiting: empty folder; "
        "incoming waiting: still changing (quiet for 0s of 30s)"
    )
    later = patient_daemon.tick(after_s=12)
    assert later.skip_message and "quiet for 12s of 30s" in later.skip_message


@pytest.fixture
def retrying_daemon(settings: Settings, instance, clock: Clock) -> Daemon:
    return Daemon(settings.model_copy(update={"retry_failed_s": 600.0}), instance, clock)


def _ended_run(daemon: Daemon, request: dg.RunRequest, *, cancelled: bool) -> str:
    """A run of the request that ended without success, as the UI's Terminate or a crash
    leaves it (no retries left: Dagster never retries a cancelled run)."""
    job = daemon.defs.resolve_job_def(PIPELINE_JOB_NAME)
    run = daemon.instance.create_run_for_job(
        job_def=job,
        run_config=request.run_config,
        tags={**request.tags, "dagster/partition": request.partition_key or ""},
    )
    if cancelled:
        daemon.instance.report_run_canceled(run)
    else:
        daemon.instance.report_run_failed(run)
    return run.run_id


def test_a_cancelled_run_is_named_and_re_requested(retrying_daemon: Daemon, drop_root: Path):
    copy_samples(drop_root, "halted", names=["rocket.jpg"])
    (request,) = retrying_daemon.tick().run_requests
    run_id = _ended_run(retrying_daemon, request, cancelled=True)
    data = retrying_daemon.tick(after_s=60)
    assert data.run_requests == [] and "1 failed: halted" in (data.skip_message or "")
    (retry,) = retrying_daemon.tick(after_s=600).run_requests
    assert retry.partition_key == "halted" and retry.run_key != request.run_key
    assert retrying_daemon.run(retry).success
    assert retrying_daemon.tick(after_s=3600).run_requests == []
    assert run_id not in (retrying_daemon.cursor or "")


def test_a_success_launched_from_an_asset_page_clears_the_failure(
    retrying_daemon: Daemon, drop_root: Path
):
    copy_samples(drop_root, "fixed", names=["rocket.jpg"])
    (request,) = retrying_daemon.tick().run_requests
    _ended_run(retrying_daemon, request, cancelled=False)
    assert "1 failed: fixed" in (retrying_daemon.tick(after_s=60).skip_message or "")
    asset_job = retrying_daemon.defs.resolve_implicit_global_asset_job_def()
    assert asset_job.name.startswith("__ASSET_JOB")
    result = asset_job.execute_in_process(partition_key="fixed", instance=retrying_daemon.instance)
    assert result.success
    data = retrying_daemon.tick(after_s=600)
    assert data.run_requests == [] and "failed" not in (data.skip_message or "")


def test_every_retry_of_a_loose_drop_is_launched(failing_daemon: Daemon, drop_root: Path):
    (drop_root / "lone.jpg").write_bytes(jpeg_bytes(seed=60))
    (request,) = failing_daemon.tick().run_requests
    no_retries = {"dagster/max_retries": "0"}
    result = failing_daemon.run(request, raise_on_error=False, tags={**request.tags, **no_retries})
    assert not result.success
    for _ in range(2):  # the daemon must launch each retry: a repeated run_key is skipped
        assert failing_daemon.tick(after_s=1).run_requests == []  # learns of the failure
        (retry,) = failing_daemon.tick(after_s=600).run_requests
        assert retry.partition_key == request.partition_key
        result = failing_daemon.run(retry, raise_on_error=False, tags={**retry.tags, **no_retries})
        assert not result.success


def test_a_locked_warehouse_does_not_hold_the_tick(
    daemon: Daemon, drop_root: Path, warehouse: Warehouse
):
    """Dagster cuts a tick at 60 s: the sensor waits seconds for the warehouse, says it is
    busy, and decides on the next tick."""
    warehouse.ensure_schema()
    copy_samples(drop_root, "waiting", names=["rocket.jpg"])
    with contextlib.ExitStack() as lock:
        lock.enter_context(locking.hold(warehouse.path, exclusive=True, timeout_s=5))
        release = threading.Timer(20, lock.close)  # what a long writer would do, at last
        release.start()
        try:
            started = time.monotonic()
            data = daemon.tick()
            elapsed = time.monotonic() - started
        finally:
            release.cancel()
    assert elapsed < 12, f"the tick waited {elapsed:.1f}s for the warehouse"
    assert data.run_requests == []
    assert "warehouse busy" in (data.skip_message or "")
    (request,) = daemon.tick(after_s=30).run_requests
    assert request.partition_key == "waiting"
