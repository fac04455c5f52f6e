"""From the sensor's tick to the end of the requested runs, with nobody rerunning anything by
hand: files that arrive during a run, a file edited after ingestion, a deleted warehouse and
folder names that are not UTF-8 each end with every file accounted for and every image labelled.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import RUN_KEY_TAG

from core.warehouse import Warehouse
from orchestration.settings import Settings
from tests.conftest import copy_samples
from tests.fixtures.bad_inputs import jpeg_bytes
from tests.sensors.test_drop_sensor import Clock, Daemon

GPU_POOL = "gpu"  # the VLM step's pool, on every device


@pytest.fixture
def daemon(settings: Settings, instance: dg.DagsterInstance) -> Daemon:
    return Daemon(settings, instance, Clock())


def files_on_disk(folder: Path) -> int:
    return sum(
        1
        for _, dirs, files in os.walk(os.fsencode(folder))
        for name in files
        if not name.startswith(b".")
    )


def accounted_for(warehouse: Warehouse, drop_id: str) -> int:
    """Files of the drop with a present image or rejected row."""
    return warehouse.rows(
        "SELECT (SELECT count(*) FROM image_files WHERE drop_id = $d AND vanished_at IS NULL)"
        " + (SELECT count(*) FROM rejected_files WHERE drop_id = $d AND vanished_at IS NULL)",
        {"d": drop_id},
    )[0][0]


def unlabelled(warehouse: Warehouse, drop_id: str) -> list[tuple]:
    """Images of the drop without an embedding, a zero-shot label or an `ok` extraction of every
    task, and files whose bytes a model stage found changed: what a rerun by hand would fix."""
    return warehouse.rows(
        """
        WITH tasks AS (SELECT count(DISTINCT task) AS n FROM vlm_extractions)
        SELECT f.path, f.changed_at IS NOT NULL AS changed,
               EXISTS (SELECT 1 FROM clip_embeddings e WHERE e.image_id = f.image_id) AS embedded,
               EXISTS (SELECT 1 FROM clip_zero_shot z WHERE z.image_id = f.image_id) AS labelled,
               (SELECT count(DISTINCT v.task) FROM vlm_extractions v
                 WHERE v.image_id = f.image_id AND v.status = 'ok') AS extracted,
               (SELECT n FROM tasks) AS tasks
        FROM image_files f
        WHERE f.drop_id = $d AND f.vanished_at IS NULL
          AND (f.changed_at IS NOT NULL
               OR NOT EXISTS (SELECT 1 FROM clip_embeddings e WHERE e.image_id = f.image_id)
               OR NOT EXISTS (SELECT 1 FROM clip_zero_shot z WHERE z.image_id = f.image_id)
               OR (SELECT count(DISTINCT v.task) FROM vlm_extractions v
                    WHERE v.image_id = f.image_id AND v.status = 'ok') < (SELECT n FROM tasks)
               OR (SELECT n FROM tasks) = 0)
        """,
        {"d": drop_id},
    )


def assert_complete(warehouse: Warehouse, drop_id: str, folder: Path) -> None:
    assert accounted_for(warehouse, drop_id) == files_on_disk(folder)
    assert unlabelled(warehouse, drop_id) == []


@contextlib.contextmanager
def run_waiting_for_the_gpu(daemon: Daemon, request: dg.RunRequest) -> Iterator[dict]:
    """Run the request in a thread while another run holds the `gpu` pool's one slot, as a run
    waits behind another drop's VLM step; yields once its images are ingested and embedded,
    and lets the run finish on exit (`outcome["result"]`)."""
    storage = daemon.instance.event_log_storage
    storage.set_concurrency_slots(GPU_POOL, 1)
    claim = storage.claim_concurrency_slot(GPU_POOL, "another-drop-run", "vlm_extractions")
    assert claim.is_claimed
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=daemon.run(request)))
    thread.start()
    try:
        deadline = time.monotonic() + 240
        done: set[str] = set()
        while not {"images", "clip_embeddings"} <= done:
            assert time.monotonic() < deadline and thread.is_alive(), f"run stopped at {done}"
            runs = daemon.instance.get_runs(
                filters=dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key or ""}), limit=1
            )
            if runs:
                events = daemon.instance.all_logs(
                    runs[0].run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
                )
                done = {
                    e.dagster_event.asset_key.to_user_string()
                    for e in events
                    if e.dagster_event and e.dagster_event.asset_key
                }
            time.sleep(0.2)
        assert runs[0].status == dg.DagsterRunStatus.STARTED
        yield outcome
    finally:
        storage.free_concurrency_slots_for_run("another-drop-run")
        thread.join(timeout=300)
    assert outcome["result"].success


def test_files_arriving_during_a_run_get_the_next_run_after_it(
    daemon: Daemon, drop_root: Path, warehouse: Warehouse
):
    folder = copy_samples(drop_root, "arriving", names=["astronaut.jpg", "coffee.jpg"])
    (first,) = daemon.tick().run_requests
    with run_waiting_for_the_gpu(daemon, first):
        (folder / "late-1.jpg").write_bytes(jpeg_bytes(seed=71))
        (folder / "late-2.jpg").write_bytes(jpeg_bytes(seed=72))
        during = daemon.tick(after_s=30)
        assert during.run_requests == [], "a second run of a drop that is still running"
        assert "has not ended" in (during.skip_message or "")
    (second,) = daemon.tick(after_s=30).run_requests
    assert second.partition_key == "arriving"
    assert daemon.run(second).success
    assert_complete(warehouse, "arriving", folder)
    assert daemon.tick(after_s=30).run_requests == []


def test_a_file_changed_after_ingestion_is_ingested_and_labelled_again(
    daemon: Daemon, drop_root: Path, warehouse: Warehouse
):
    """Same size, same mtime, other bytes: only a model stage's hash can tell (`changed_at`)."""
    folder = copy_samples(drop_root, "edited", names=["astronaut.jpg", "coffee.jpg"])
    target = folder / "coffee.jpg"
    (first,) = daemon.tick().run_requests
    with run_waiting_for_the_gpu(daemon, first):
        before = target.stat()
        other = jpeg_bytes(width=32, height=24, seed=73)
        target.write_bytes(other + b"\0" * (before.st_size - len(other)))
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    changed = warehouse.rows("SELECT path FROM image_files WHERE changed_at IS NOT NULL")
    assert changed == [("edited/coffee.jpg",)]  # what the run found
    (again,) = daemon.tick(after_s=30).run_requests
    assert again.partition_key == "edited" and again.run_key != first.run_key
    result = daemon.run(again)
    assert (
        result.asset_materializations_for_node("images")[0].metadata["files_processed"].value == 1
    )
    assert_complete(warehouse, "edited", folder)
    assert daemon.tick(after_s=30).run_requests == []


def test_a_deleted_warehouse_is_filled_again(daemon: Daemon, drop_root: Path, warehouse: Warehouse):
    folder = copy_samples(drop_root, "kept", names=["rocket.jpg"])
    (first,) = daemon.tick().run_requests
    assert daemon.run(first).success
    assert daemon.tick(after_s=30).run_requests == []
    for path in warehouse.path.parent.glob(warehouse.path.name + "*"):
        path.unlink()
    (again,) = daemon.tick(after_s=30).run_requests
    assert again.partition_key == "kept" and again.run_key != first.run_key
    assert daemon.run(again).success
    assert_complete(warehouse, "kept", folder)
    assert daemon.tick(after_s=30).run_requests == []


def _non_utf8_drops(drop_root: Path) -> None:
    """A drop folder named in Latin-1 (`dépôt`) and a drop with a Latin-1 sub-folder (`café`)."""
    root = os.fsencode(drop_root)
    for folder, seed in ((b"/d\xe9p\xf4t", 81), (b"/album/caf\xe9", 82), (b"/album", 83)):
        os.makedirs(root + folder, exist_ok=True)
        with open(root + folder + b"/photo.jpg", "wb") as handle:
            handle.write(jpeg_bytes(seed=seed))


def test_non_utf8_folder_names_are_ingested_under_escaped_names(
    daemon: Daemon, drop_root: Path, warehouse: Warehouse
):
    """Each tick used to fail on the cursor (`surrogates not allowed`) and the drop folder was
    ignored; its partition key is now the name escaped as file names are (`\\xNN`)."""
    _non_utf8_drops(drop_root)
    requests = {r.partition_key: r for r in daemon.tick().run_requests}
    assert sorted(requests) == ["album", "d\\xe9p\\xf4t"]
    for request in requests.values():
        result = daemon.run(request)
        assert result.success
        (images,) = result.asset_materializations_for_node("images")
        expected = {"album": 2, "d\\xe9p\\xf4t": 1}[request.partition_key or ""]
        assert images.metadata["files_processed"].value == expected
    assert warehouse.rows("SELECT drop_id, path FROM image_files ORDER BY path") == [
        ("album", "album/caf\\xe9/photo.jpg"),
        ("album", "album/photo.jpg"),
        ("d\\xe9p\\xf4t", "d\\xe9p\\xf4t/photo.jpg"),
    ]
    data = daemon.tick(after_s=30)
    assert data.run_requests == [] and "ignored" not in (data.skip_message or "")


def test_images_under_non_utf8_folder_names_are_labelled(
    daemon: Daemon, drop_root: Path, warehouse: Warehouse
):
    _non_utf8_drops(drop_root)
    for request in daemon.tick().run_requests:
        assert daemon.run(request).success
    assert_complete(warehouse, "album", drop_root / "album")
    assert_complete(
        warehouse, "d\\xe9p\\xf4t", Path(os.fsdecode(os.fsencode(drop_root) + b"/d\xe9p\xf4t"))
    )
    assert daemon.tick(after_s=30).run_requests == []
