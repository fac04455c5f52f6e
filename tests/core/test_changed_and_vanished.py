"""Every stage reads a file safely, sees the bytes its image_id names, and survives files that
changed or vanished after ingestion (CLIP and the VLM)."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

from core.clip import checks as clip_checks
from core.clip.pipeline import embed_drop
from core.ingest.ingest import DropIngestor
from core.ingest.scan import DropRef
from core.tasks.base import Task
from core.tasks.registry import get_task
from core.vlm import checks as vlm_checks
from core.vlm.checks import ExtractionScope
from core.vlm.run import extract_drop
from core.vlm.types import ExtractionResult, ImageInput, VLMBackend
from core.warehouse import Warehouse
from tests.conftest import copy_samples

AGE_GENDER = get_task("age_gender")


class RecordingBackend(VLMBackend):
    """Answers every image and records the bytes it was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []  # (image_id, sha256 of the bytes received)

    @property
    def model_id(self) -> str:
        return "test/recording"

    def extract(self, images: Sequence[ImageInput], task: Task) -> list[ExtractionResult]:
        results = []
        for image in images:
            data = image.data if image.data is not None else image.path.read_bytes()
            self.seen.append((image.image_id, hashlib.sha256(data).hexdigest()))
            results.append(
                ExtractionResult(
                    image_id=image.image_id,
                    status="ok",
                    parsed={"age_group": "21-30", "gender": "female"},
                )
            )
        return results


def _image_id(warehouse: Warehouse, path: str) -> str:
    return warehouse.rows("SELECT image_id FROM image_files WHERE path = ?", [path])[0][0]


def _edit_keeping_size_and_mtime(path: Path) -> None:
    """Change the bytes in place as a tool that preserves size and mtime would."""
    info = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_clip_records_changed_content_and_the_next_ingest_rehashes_it(
    ingested_samples: Warehouse, drop_root: Path, standin_clip
):
    warehouse = ingested_samples
    old_id = _image_id(warehouse, "samples/coffee.jpg")
    _edit_keeping_size_and_mtime(drop_root / "samples" / "coffee.jpg")
    report = embed_drop(warehouse, drop_root, "samples", standin_clip, log=lambda _: None)
    assert warehouse.rows(
        "SELECT image_id, status FROM clip_failures WHERE model_id = ?", [standin_clip.model_id]
    ) == [(old_id, "changed_since_ingest")]
    assert report.written["global"] == 6
    again = DropIngestor(warehouse, drop_root).ingest(DropRef.folder("samples"))
    assert again.files_processed == 1  # re-hashed although size and mtime are the same
    assert _image_id(warehouse, "samples/coffee.jpg") != old_id


def test_clip_reads_another_copy_when_one_vanished_and_marks_the_image_unavailable_when_none(
    ingested_samples: Warehouse, drop_root: Path, standin_clip
):
    warehouse = ingested_samples
    copy_samples(drop_root, "again", names=["rocket.jpg"])
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("again"))
    (drop_root / "samples" / "rocket.jpg").unlink()
    (drop_root / "samples" / "coins.jpg").unlink()
    report = embed_drop(warehouse, drop_root, "samples", standin_clip, log=lambda _: None)
    assert report.written["global"] == 6  # rocket from drop 'again', coins from nowhere
    coins = _image_id(warehouse, "samples/coins.jpg")
    assert warehouse.rows("SELECT image_id, status FROM clip_failures") == [(coins, "unavailable")]
    outcomes = clip_checks.embedding_checks(
        warehouse, "samples", standin_clip.model_id, expected_dim=standin_clip.embed_dim
    )
    one_per_image = outcomes[0]
    assert one_per_image.passed and one_per_image.counts["unavailable"] == 1
    second = embed_drop(warehouse, drop_root, "samples", standin_clip, log=lambda _: None)
    assert second.images_processed == 0  # not retried on every run


def test_clip_does_not_block_on_a_file_swapped_for_a_fifo(
    ingested_samples: Warehouse, drop_root: Path, standin_clip
):
    path = drop_root / "samples" / "chelsea.jpg"
    path.unlink()
    os.mkfifo(path)
    done = threading.Event()

    def run() -> None:
        embed_drop(ingested_samples, drop_root, "samples", standin_clip, log=lambda _: None)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    if thread.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=10)
    assert done.is_set(), "CLIP blocked on a FIFO"
    assert ingested_samples.rows("SELECT status FROM clip_failures") == [("unavailable",)]


def test_the_vlm_sees_bytes_that_hash_to_the_image_id_or_records_why_not(
    ingested_samples: Warehouse, drop_root: Path
):
    warehouse = ingested_samples
    changed = _image_id(warehouse, "samples/coffee.jpg")
    gone = _image_id(warehouse, "samples/coins.jpg")
    _edit_keeping_size_and_mtime(drop_root / "samples" / "coffee.jpg")
    (drop_root / "samples" / "coins.jpg").unlink()
    backend = RecordingBackend()
    [report] = extract_drop(
        warehouse, backend, "samples", drop_root, [AGE_GENDER], log=lambda _: None
    )
    assert len(backend.seen) == 5 and all(i == h for i, h in backend.seen)
    assert report.statuses == {"ok": 5, "unavailable": 1, "changed_since_ingest": 1}
    rows = dict(
        warehouse.rows(
            "SELECT image_id, status FROM vlm_extractions WHERE status <> 'ok' ORDER BY 1"
        )
    )
    assert rows == {changed: "changed_since_ingest", gone: "unavailable"}
    scope = ExtractionScope(
        task=AGE_GENDER.name, model_id=backend.model_id, task_fingerprint=AGE_GENDER.fingerprint
    )
    coverage = vlm_checks.extraction_coverage(warehouse, "samples", scope)
    validity = vlm_checks.extraction_validity(warehouse, "samples", scope)
    assert coverage.passed and validity.passed
    assert validity.counts["unavailable"] == 1 and validity.value == 1.0
    extract_drop(warehouse, backend, "samples", drop_root, [AGE_GENDER], log=lambda _: None)
    assert len(backend.seen) == 5  # unavailable and changed images are not retried every run


def test_the_drops_table_balances_after_deletions(ingested_samples: Warehouse, drop_root: Path):
    (drop_root / "samples" / "rocket.jpg").unlink()
    (drop_root / "samples" / "bad.jpg").write_bytes(b"not an image")
    DropIngestor(ingested_samples, drop_root).ingest(DropRef.folder("samples"))
    [(seen, ingested, rejected)] = ingested_samples.rows(
        "SELECT files_seen, files_ingested, files_rejected FROM drops WHERE drop_id = 'samples'"
    )
    assert seen == ingested + rejected == 7
    shutil.copy(
        Path(__file__).parent.parent.parent / "data/samples/rocket.jpg", drop_root / "samples"
    )
    DropIngestor(ingested_samples, drop_root).ingest(DropRef.folder("samples"))
    [(seen, ingested, rejected)] = ingested_samples.rows(
        "SELECT files_seen, files_ingested, files_rejected FROM drops WHERE drop_id = 'samples'"
    )
    assert seen == ingested + rejected == 8
