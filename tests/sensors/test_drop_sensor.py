"""The drop sensor, evaluated the way the daemon does it: cursor in, partitions and runs out."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

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
        self.defs = build_definitions(settings, clock=clock)
        self.resources = build_resources(settings)
        self.sensor = self.defs.resolve_sensor_def(SENSOR_NAME)
        self.instance = instance
        self.clock = clock
        self.cursor: str | None = None

    def tick(self, *, after_s: float = 0.0) -> dg.SensorResult:
        self.clock.now += after_s
        context = dg.build_sensor_context(
            instance_ref=self.instance.get_ref(),
            definitions=self.defs,
            cursor=self.cursor,
            resources={"drop_folder": self.resources["drop_folder"]},
        )
        data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        for request in data.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        return data

    def run(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(PIPELINE_JOB_NAME)
        return job.execute_in_process(
            partition_key=request.partition_key,
            run_config=request.run_config,
            instance=self.instance,
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


def test_a_restarted_daemon_keeps_its_cursor_and_does_not_retrigger(
    settings, instance, clock, drop_root: Path
):
    copy_samples(drop_root, "done", names=["rocket.jpg"])
    first = Daemon(settings, instance, clock)
    assert len(first.tick().run_requests) == 1
    restarted = Daemon(settings, instance, clock)
    restarted.cursor = first.cursor  # what the daemon stored in the instance
    data = restarted.tick(after_s=3600)
    assert data.run_requests == []
    assert json.loads(restarted.cursor or "{}")["requested"].keys() == {"done"}


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
    assert len(daemon.tick().run_requests) == 1
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
    assert data.skip_message == "no drop is ready"
