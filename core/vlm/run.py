"""One extraction pass over a drop: pending images only, batch by batch, one transaction each."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.progress import Progress
from core.tasks.base import Task
from core.vlm.inputs import read_inputs
from core.vlm.store import pending_images, write_batch
from core.vlm.types import ExtractionResult, VLMBackend
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
        """All tasks of a run as one report; tasks run one after another, so seconds add up."""
        total = cls(task="all", fingerprint="")
        for r in reports:
            total.pending += r.pending
            total.statuses.update(r.statuses)
            total.latencies_ms.extend(r.latencies_ms)
            total.prompt_tokens += r.prompt_tokens
            total.cached_tokens += r.cached_tokens
            total.seconds += r.seconds
        return total


def extract_drop(
    warehouse: Warehouse,
    backend: VLMBackend,
    drop_id: str,
    drop_root: Path,
    tasks: Sequence[Task],
    *,
    batch_size: int = 64,
    log: Callable[[str], None] = print,
) -> list[TaskReport]:
    """Extract every task for the drop's images that lack a result; resumable at batch level."""
    model_id = backend.model_id
    reports = []
    for task in tasks:
        report = TaskReport(task.name, task.fingerprint)
        todo = pending_images(warehouse, drop_id, drop_root, task, model_id)
        report.pending = len(todo)
        log(f"{task.name} ({task.fingerprint}) with {model_id}: {len(todo)} images to extract")
        progress = Progress(f"extract {task.name}", len(todo), log)
        started = time.monotonic()
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            readable, results = read_inputs(warehouse, drop_root, drop_id, batch)
            results += backend.extract(readable, task) if readable else []
            write_batch(warehouse, task, model_id, drop_id, results)
            report.add(results)
            progress.advance(len(batch))
        report.seconds = time.monotonic() - started
        if todo:
            progress.finish()
        reports.append(report)
    return reports
