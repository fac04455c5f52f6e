import dataclasses
import threading
from pathlib import Path

import pytest

from core.tasks.registry import get_task
from core.vlm.run import TaskReport, extract_drop, run_batches
from core.vlm.types import ExtractionResult, ImageInput, VLMBackend

pytestmark = pytest.mark.both_backends  # the warehouse SQL runs on the file and the lake


def _result(image_id: str, status: str, latency_ms: float, prompt: int, cached: int):
    return ExtractionResult(
        image_id=image_id,
        status=status,
        latency_ms=latency_ms,
        prompt_tokens=prompt,
        cached_tokens=cached,
    )


def test_a_task_report_counts_statuses_latency_and_cached_tokens():
    report = TaskReport("scenery_people", "fp1", seconds=2.0)
    report.add([_result("a", "ok", 100, 50, 40), _result("b", "invalid", 300, 50, 0)])

    assert report.done == 2
    assert report.validity_rate == 0.5
    assert report.images_per_s == 1.0
    assert report.cached_token_ratio == 0.4
    assert report.latency_percentile(50) == 200


def test_the_run_report_combines_tasks_that_ran_together():
    first = TaskReport("scenery_people", "fp1", seconds=1.0)
    first.add([_result("a", "ok", 100, 10, 10), _result("b", "ok", 100, 10, 10)])
    second = TaskReport("age_gender", "fp2", seconds=3.0)
    second.add([_result("a", "truncated", 500, 30, 0), _result("b", "ok", 300, 30, 0)])

    combined = TaskReport.combined([first, second])

    assert combined.done == 4
    assert combined.statuses == {"ok": 3, "truncated": 1}
    assert combined.images_per_s == 4 / 3  # 4 results in the run's 3 s
    assert combined.cached_token_ratio == 20 / 80
    assert combined.latency_percentile(50) == 200
    assert combined.latency_percentile(95) > 300


class _CountingBackend(VLMBackend):
    """Answers `truncated` for every image and counts what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    @property
    def model_id(self) -> str:
        return "counting"

    def extract(self, images, task):
        self.asked += [(image.image_id, task.max_completion_tokens) for image in images]
        return [
            ExtractionResult(image_id=image.image_id, status="truncated", error="token limit")
            for image in images
        ]


def test_raising_the_token_budget_re_extracts_truncated_rows(ingested_samples, drop_root):
    task = get_task("age_gender")
    backend = _CountingBackend()
    extract_drop(ingested_samples, backend, "samples", drop_root, [task], log=lambda _: None)
    first = len(backend.asked)
    assert first > 0
    extract_drop(ingested_samples, backend, "samples", drop_root, [task], log=lambda _: None)
    assert len(backend.asked) == first  # truncated is final for this budget

    raised = dataclasses.replace(task, max_completion_tokens=task.max_completion_tokens * 4)
    extract_drop(ingested_samples, backend, "samples", drop_root, [raised], log=lambda _: None)
    assert len(backend.asked) == 2 * first
    assert {budget for _, budget in backend.asked[first:]} == {raised.max_completion_tokens}


class _GatedBackend(VLMBackend):
    """Holds every batch at the 'model' until batch `release_after` has been prepared."""

    def __init__(self, release_after: int) -> None:
        self.prepared_batches = 0
        self.release_after = release_after
        self.released = threading.Event()

    @property
    def model_id(self) -> str:
        return "gated"

    def prepare(self, images):
        self.prepared_batches += 1
        if self.prepared_batches >= self.release_after:
            self.released.set()
        return super().prepare(images)

    def extract(self, images, task):
        if not self.released.wait(timeout=20):
            raise TimeoutError(f"only {self.prepared_batches} batches were prepared")
        return [ExtractionResult(image_id=image.image_id, status="ok") for image in images]


def test_the_next_batch_is_prepared_while_depth_batches_are_with_the_model():
    """Batches 1 and 2 at the model, batch 3 prepared meanwhile: preparing inside each batch's
    own worker made batches move in lockstep (all preparing, then all waiting on the model)."""
    backend = _GatedBackend(release_after=3)
    images = [ImageInput(image_id=f"i{n}", path=Path(f"i{n}.jpg")) for n in range(8)]
    written: list[str] = []
    run_batches(
        backend,
        [(get_task("scenery_people"), images)],
        lambda _, results: written.extend(r.image_id for r in results),
        batch_size=2,
        depth=2,
    )
    assert written == [image.image_id for image in images]  # in batch order, none lost
