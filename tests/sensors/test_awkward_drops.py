"""Awkward drops from the sensor's tick to the end of the run: nothing red on honest input, every
file accounted for, names the OS spells with a backslash or a non-UTF-8 byte labelled."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from core.quality.outcome import NO_IMAGES
from core.warehouse import Warehouse
from orchestration.settings import Settings
from tests.fixtures.bad_inputs import jpeg_bytes
from tests.sensors.test_drop_sensor import Clock, Daemon


@pytest.fixture
def daemon(settings: Settings, instance: dg.DagsterInstance) -> Daemon:
    return Daemon(settings, instance, Clock())


def _check_results(result: dg.ExecuteInProcessResult) -> list[dg.AssetCheckEvaluation]:
    return [
        event.asset_check_evaluation_data
        for event in result.all_events
        if event.event_type_value == "ASSET_CHECK_EVALUATION"
    ]


def test_a_drop_of_only_rejected_files_is_a_green_run_with_every_file_accounted_for(
    daemon: Daemon, drop_root: Path, settings: Settings
):
    """Empty files, a copy that stalled half-way and text files, on a fresh warehouse."""
    folder = drop_root / "nothing-decodes"
    folder.mkdir()
    for index in range(3):
        (folder / f"empty-{index}.jpg").touch()
    (folder / "stalled.jpg").write_bytes(jpeg_bytes(width=320, height=240, seed=3)[:700])
    (folder / "notes.txt").write_text("not a picture\n")
    (folder / "readme.jpg").write_text("a text file named like a photo\n")
    assert not settings.warehouse_path.exists()  # a fresh warehouse: no model table exists yet

    (request,) = daemon.tick().run_requests
    result = daemon.run(request, raise_on_error=False)

    failed_steps = [
        event.step_key for event in result.all_events if event.event_type_value == "STEP_FAILURE"
    ]
    assert result.success, f"steps failed: {failed_steps}"
    warehouse = Warehouse(settings.warehouse_path)
    rejected = dict(
        warehouse.rows("SELECT path, reason FROM rejected_files WHERE drop_id = 'nothing-decodes'")
    )
    assert rejected == {
        "nothing-decodes/empty-0.jpg": "empty",
        "nothing-decodes/empty-1.jpg": "empty",
        "nothing-decodes/empty-2.jpg": "empty",
        "nothing-decodes/stalled.jpg": "truncated",
        "nothing-decodes/notes.txt": "not_an_image",
        "nothing-decodes/readme.jpg": "not_an_image",
    }
    assert warehouse.rows("SELECT count(*) FROM image_files")[0][0] == 0
    assert warehouse.rows(
        "SELECT files_seen, files_ingested, files_rejected FROM drops"
        " WHERE drop_id = 'nothing-decodes'"
    ) == [(6, 0, 6)]
    evaluations = _check_results(result)
    assert evaluations, "no check ran"
    blocking = [e for e in evaluations if e.severity == dg.AssetCheckSeverity.ERROR]
    assert all(e.passed for e in blocking), [
        (e.check_name, e.metadata.get("summary")) for e in blocking if not e.passed
    ]
    by_name = {(e.asset_key.to_user_string(), e.check_name): e for e in evaluations}
    nothing_lost = by_name[("images", "nothing_lost")]
    assert nothing_lost.passed
    for key in [
        ("clip_embeddings", "embedding_one_per_image"),
        ("vlm_extractions", "extraction_coverage"),
        ("vlm_extractions", "extraction_validity_rate"),
        ("clip_zero_shot", "zero_shot_one_per_image"),
    ]:
        evaluation = by_name[key]
        assert evaluation.passed, key
        assert "nothing to check" in str(evaluation.metadata["summary"].value), key
    # Not only the blocking checks: every check of the run passes but two true warnings, on
    # the labelled set (none of its images is ingested) and on the drop's files (all rejected).
    warnings = {("evaluation", "labelled_images_ingested"), ("images", "rejection_rate")}
    assert {key for key, e in by_name.items() if not e.passed} == warnings
    # The checks of the drop's files judge 6 files; the review queue and the drop page check
    # what the run wrote for them (nothing). Every check of a model's output says it had
    # nothing to judge, the same words on every asset (`core.quality.outcome.NO_IMAGES`).
    judged = {"images", "review_queue", "drop_page"}
    unsaid = {
        key: str(e.metadata["summary"].value)
        for key, e in by_name.items()
        if key[0] not in judged
        and key not in warnings
        and NO_IMAGES not in str(e.metadata["summary"].value)
    }
    assert not unsaid, unsaid
    assert {key[0] for key in by_name} - judged == {
        "clip_embeddings",
        "clip_zero_shot",
        "vlm_extractions",
        "evaluation",
        "label_agreement",
    }


def _raw_name(folder: Path, name: bytes) -> Path:
    """A file whose name the OS spells with bytes that are not UTF-8."""
    raw = os.fsencode(folder) + b"/" + name
    with open(raw, "wb") as handle:
        handle.write(jpeg_bytes(seed=len(name)))
    return Path(os.fsdecode(raw))


def test_names_with_a_backslash_or_a_non_utf8_byte_are_embedded_and_labelled(
    daemon: Daemon, drop_root: Path, settings: Settings
):
    folder = drop_root / "odd-names"
    folder.mkdir()
    (folder / "win\\path.jpg").write_bytes(jpeg_bytes(seed=61))
    _raw_name(folder, b"caf\xe9.jpg")  # Latin-1 e-acute: not UTF-8
    (folder / "plain.jpg").write_bytes(jpeg_bytes(seed=62))

    (request,) = daemon.tick().run_requests
    result = daemon.run(request)
    assert result.success

    warehouse = Warehouse(settings.warehouse_path)
    files = warehouse.rows(
        "SELECT path, image_id, vanished_at, changed_at FROM image_files"
        " WHERE drop_id = 'odd-names' ORDER BY path"
    )
    assert [path for path, *_ in files] == [
        "odd-names/caf\\xe9.jpg",
        "odd-names/plain.jpg",
        "odd-names/win\\\\path.jpg",
    ]
    assert all(vanished is None and changed is None for _, _, vanished, changed in files)
    ids = [image_id for _, image_id, _, _ in files]
    embedded = {i for (i,) in warehouse.rows("SELECT image_id FROM clip_embeddings")}
    assert set(ids) <= embedded
    assert warehouse.rows("SELECT count(*) FROM clip_failures")[0][0] == 0
    statuses = warehouse.rows(
        "SELECT image_id, task, status FROM vlm_extractions ORDER BY image_id, task"
    )
    tasks = {task for _, task, _ in statuses}
    assert tasks and {(i, t) for i, t, _ in statuses} == {(i, t) for i in ids for t in tasks}
    assert {status for _, _, status in statuses} == {"ok"}


def test_a_drop_whose_only_image_vanished_before_the_models_is_a_green_run(
    daemon: Daemon, drop_root: Path, settings: Settings
):
    folder = drop_root / "vanishing"
    folder.mkdir()
    (folder / "only.jpg").write_bytes(jpeg_bytes(seed=71))
    (request,) = daemon.tick().run_requests
    daemon.ingest(request)  # the run's ingestion saw it; then it went before CLIP read it
    (folder / "only.jpg").unlink()
    (folder / "broken.jpg").touch()  # and the drop changed, so the folder is still a drop
    result = daemon.run(request, raise_on_error=False)
    failed_steps = [
        event.step_key for event in result.all_events if event.event_type_value == "STEP_FAILURE"
    ]
    assert result.success, f"steps failed: {failed_steps}"
    evaluations = _check_results(result)
    assert all(e.passed for e in evaluations if e.severity == dg.AssetCheckSeverity.ERROR), [
        (e.check_name, e.metadata.get("summary")) for e in evaluations if not e.passed
    ]
