"""A drop with no decodable image (or whose only image vanished before the models) on a fresh
warehouse: the model stages record nothing, fail nothing, and their checks say so."""

from __future__ import annotations

from pathlib import Path

from core.clip import checks as clip_checks
from core.clip import store
from core.clip.pipeline import embed_drop
from core.ingest.ingest import DropIngestor
from core.ingest.scan import DropRef
from core.quality import cross_stage
from core.quality.outcome import NO_IMAGES
from core.tasks.registry import TASKS, get_tasks
from core.vlm import checks as vlm_checks
from core.vlm import guards
from core.vlm.store import extraction_preview
from core.warehouse import Warehouse
from tests.fixtures.bad_inputs import jpeg_bytes


def _only_rejected(warehouse: Warehouse, drop_root: Path) -> None:
    folder = drop_root / "bad"
    folder.mkdir()
    (folder / "empty.jpg").touch()
    (folder / "stalled.jpg").write_bytes(jpeg_bytes(width=320, height=240)[:600])
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("bad"))


def test_extraction_checks_and_preview_on_a_drop_without_images(
    warehouse: Warehouse, drop_root: Path
):
    _only_rejected(warehouse, drop_root)
    tasks = get_tasks(list(TASKS))
    preview, total, per_table = extraction_preview(
        warehouse, "bad", "m", [task.tables.table for task in tasks]
    )
    assert preview.height == 0 and total == 0 and set(per_table.values()) == {0}
    for task in tasks:
        scope = vlm_checks.ExtractionScope(
            task=task.name, model_id="m", task_fingerprint=task.fingerprint
        )
        for outcome in vlm_checks.extraction_checks(warehouse, "bad", scope, task.model):
            assert outcome.passed, (outcome.check_name, outcome.summary)
            assert "nothing to check" in outcome.summary, (outcome.check_name, outcome.summary)


def test_embedding_checks_when_the_only_image_vanished_before_clip(
    warehouse: Warehouse, drop_root: Path, standin_clip
):
    folder = drop_root / "gone"
    folder.mkdir()
    (folder / "only.jpg").write_bytes(jpeg_bytes(seed=4))
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("gone"))
    (folder / "only.jpg").unlink()
    report = embed_drop(warehouse, drop_root, "gone", standin_clip, log=lambda _: None)
    assert list(report.unreadable.values()) == ["unavailable"]
    outcomes = clip_checks.embedding_checks_by_kind(
        warehouse, "gone", standin_clip.model_id, report.dims
    )
    for outcome in outcomes:
        assert outcome.passed, (outcome.check_name, outcome.summary)
    (per_image,) = [o for o in outcomes if o.check_name == clip_checks.EMBEDDING_ONE_PER_IMAGE]
    assert "nothing to check: all 1 images are unavailable" in per_image.summary
    preview, rows = store.embedding_preview(warehouse, "gone", standin_clip.model_id, 64)
    assert preview.height == 0 and rows == 0


def test_embedding_checks_on_a_drop_without_images(warehouse: Warehouse, drop_root: Path):
    _only_rejected(warehouse, drop_root)
    for outcome in clip_checks.embedding_checks(warehouse, "bad", "m", expected_dim=64):
        assert outcome.passed, (outcome.check_name, outcome.summary)
        assert "nothing to check" in outcome.summary


def _guards_and_drift(warehouse: Warehouse, drop_id: str) -> list:
    """The WARN checks that read task tables: model guards, consistency rules, label drift."""
    tasks = get_tasks(list(TASKS))
    outcomes = [
        o for part in guards.guard_checks(warehouse, drop_id, "m", tasks).values() for o in part
    ]
    for task in tasks:
        column = task.tables.columns[0][0]
        source = cross_stage.LabelSource.task_field(task.name, column, "m", task.fingerprint)
        outcomes.append(cross_stage.label_drift(warehouse, drop_id, source))
    return outcomes


def test_guards_and_drift_on_a_drop_without_images_pass_with_nothing_to_check(
    warehouse: Warehouse, drop_root: Path
):
    """A fresh warehouse: no task table exists, and none need to, since no image was sent."""
    _only_rejected(warehouse, drop_root)
    outcomes = _guards_and_drift(warehouse, "bad")
    assert {o.check_name for o in outcomes} >= {
        guards.EXTRACTION_CONSTANT_ANSWERS,
        guards.EXTRACTION_REFUSALS,
        cross_stage.LABEL_DRIFT,
        *guards.consistency_check_names(),
    }
    for outcome in outcomes:
        assert outcome.passed, (outcome.check_name, outcome.summary)
        assert NO_IMAGES in outcome.summary or "needs both" in outcome.summary, (
            outcome.check_name,
            outcome.summary,
        )


def test_a_missing_task_table_still_fails_on_a_drop_with_images(
    warehouse: Warehouse, drop_root: Path
):
    """The drop has an image but no task table exists: the stage never wrote, which is a
    failure, not "nothing to check"."""
    folder = drop_root / "one"
    folder.mkdir()
    (folder / "only.jpg").write_bytes(jpeg_bytes(seed=5))
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("one"))
    outcomes = _guards_and_drift(warehouse, "one")
    missing = {
        o.check_name
        for o in outcomes
        if not o.passed and "does not exist: has its asset ever run?" in o.summary
    }
    assert missing == {
        guards.EXTRACTION_CONSTANT_ANSWERS,
        guards.EXTRACTION_REFUSALS,  # the tasks with free-text answers
        cross_stage.LABEL_DRIFT,
        *guards.consistency_check_names(),
    }
    assert not [o.summary for o in outcomes if NO_IMAGES in o.summary]
