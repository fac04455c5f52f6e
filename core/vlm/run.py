"""One extraction pass over a drop: pending images only, batch by batch, one transaction each.

The loop is image-major: each batch of images is read and prepared once and then asked every
task, so a run with three tasks decodes each image once, not three times. While batches are with
the model (`depth` at once), the next is already being prepared and is sent the moment it is
ready, so neither the client's CPU nor a large server fleet waits for the other. Results are
written in batch order, one transaction per batch and task.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from core.progress import Progress
from core.tasks.base import Task
from core.vlm.inputs import read_inputs
from core.vlm.store import pending_images, write_batch
from core.vlm.types import ExtractionResult, ImageInput, VLMBackend
from core.warehouse import Warehouse


@dataclass
class TaskReport:
    task: str
    fingerprint: str
    pending: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    seconds: float = 0.0

    def add(self, results: Sequence[ExtractionResult]) -> None:
        for r in results:
            self.statuses[r.status] += 1
            self.latencies_ms.append(r.latency_ms)
            self.prompt_tokens += r.prompt_tokens or 0
            self.cached_tokens += r.cached_tokens or 0

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    @property
    def validity_rate(self) -> float | None:
        return self.statuses["ok"] / self.done if self.done else None

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def latency_percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]

    @property
    def cached_token_ratio(self) -> float | None:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None

    @classmethod
    def combined(cls, reports: Sequence[TaskReport]) -> TaskReport:
        """All tasks of a run as one report; the tasks ran together, so seconds is the longest."""
        total = cls(task="all", fingerprint="")
        for r in reports:
            total.pending += r.pending
            total.statuses.update(r.statuses)
            total.latencies_ms.extend(r.latencies_ms)
            total.prompt_tokens += r.prompt_tokens
            total.cached_tokens += r.cached_tokens
            total.seconds = max(total.seconds, r.seconds)
        return total


Work = Sequence[tuple[Task, Sequence[ImageInput]]]
# Reads a batch's bytes once: (images with their verified bytes, failure rows for the rest).
Reader = Callable[[list[ImageInput]], tuple[list[ImageInput], list[ExtractionResult]]]


def run_batches(
    backend: VLMBackend,
    work: Work,
    write: Callable[[Task, list[ExtractionResult]], None],
    *,
    batch_size: int = 64,
    depth: int = 2,
    on_batch: Callable[[int], None] | None = None,
    read: Reader | None = None,
) -> None:
    """Every (task, pending images) pair through the backend, each image prepared once.

    `write` is called on this thread, in batch order, once per batch and task. An exception from
    the backend propagates after the batches before it were written; later ones are dropped
    (nothing of them was written, so a rerun sends them again).
    """
    images: dict[str, ImageInput] = {}
    wanted: list[tuple[Task, set[str]]] = []
    for task, todo in work:
        wanted.append((task, {image.image_id for image in todo}))
        for image in todo:
            images.setdefault(image.image_id, image)
    ordered = list(images.values())

    def ask(
        prepared_future: Future, failures: list[ExtractionResult]
    ) -> list[tuple[Task, list[ExtractionResult]]]:
        prepared = prepared_future.result()
        jobs = [(task, [p for p in prepared if p.image.image_id in ids]) for task, ids in wanted]
        jobs = [(task, items) for task, items in jobs if items]
        outputs = backend.extract_tasks(jobs) if jobs else []
        answered = dict(zip((task.name for task, _ in jobs), outputs, strict=True))
        out = []
        for task, ids in wanted:
            results = answered.get(task.name, []) + [
                f.model_copy() for f in failures if f.image_id in ids
            ]
            if results:
                out.append((task, results))
        return out

    def drain(future: Future, size: int) -> None:
        for task, results in future.result():
            write(task, results)
        if on_batch is not None:
            on_batch(size)

    # One preparer runs batch after batch (each on all cores: `prepare` uses threads) while
    # up to `depth` earlier batches are with the model; a batch is sent the moment it is
    # prepared. Preparing inside each batch's own worker made the batches move in lockstep:
    # all preparing (the fleet idle), then all waiting on the fleet (the CPU idle).
    in_flight: deque[tuple[Future, Future, int]] = deque()
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as preparer,
        ThreadPoolExecutor(max_workers=max(1, depth), thread_name_prefix="extract") as pool,
    ):
        try:
            for start in range(0, len(ordered), batch_size):
                batch = ordered[start : start + batch_size]
                # Reading touches the warehouse, so it stays on this thread (DuckDB connections
                # are not used across threads); decoding and the requests run in the pools.
                readable, failures = read(batch) if read is not None else (batch, [])
                prepared = preparer.submit(backend.prepare, readable) if readable else _done([])
                in_flight.append((prepared, pool.submit(ask, prepared, failures), len(batch)))
                if len(in_flight) > depth:  # `depth` with the model, one being prepared
                    _, asked, size = in_flight.popleft()
                    drain(asked, size)
            while in_flight:
                _, asked, size = in_flight.popleft()
                drain(asked, size)
        finally:
            for prepared, asked, _ in in_flight:
                prepared.cancel()
                asked.cancel()


def _done(value: object) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def extract_drop(
    warehouse: Warehouse,
    backend: VLMBackend,
    drop_id: str,
    drop_root: Path,
    tasks: Sequence[Task],
    *,
    batch_size: int = 64,
    depth: int = 2,
    log: Callable[[str], None] = print,
) -> list[TaskReport]:
    """Extract every task for the drop's images that lack a result; resumable at batch level."""
    model_id = backend.model_id
    reports: dict[str, TaskReport] = {}
    work = []
    for task in tasks:
        report = TaskReport(task.name, task.fingerprint)
        todo = pending_images(warehouse, drop_id, drop_root, task, model_id)
        report.pending = len(todo)
        log(f"{task.name} ({task.fingerprint}) with {model_id}: {len(todo)} images to extract")
        reports[task.name] = report
        work.append((task, todo))
    distinct = len({image.image_id for _, todo in work for image in todo})
    progress = Progress(f"extract {len(tasks)} task(s)", distinct, log)
    started = time.monotonic()

    def write(task: Task, results: list[ExtractionResult]) -> None:
        write_batch(warehouse, task, model_id, drop_id, results)
        reports[task.name].add(results)

    def read(batch: list[ImageInput]) -> tuple[list[ImageInput], list[ExtractionResult]]:
        return read_inputs(warehouse, drop_root, drop_id, batch)

    run_batches(
        backend,
        work,
        write,
        batch_size=batch_size,
        depth=depth,
        on_batch=progress.advance,
        read=read,
    )
    seconds = time.monotonic() - started
    for report in reports.values():
        report.seconds = seconds
    if distinct:
        progress.finish()
    return list(reports.values())
