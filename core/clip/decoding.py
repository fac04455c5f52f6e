"""Decode and preprocess images on worker threads while the model runs: a bounded window.

Pillow releases the GIL while it decodes and resizes, so a few threads keep the model fed. JPEGs
decode at a reduced DCT scale (`Image.draft`) to at least twice the model's input size before
open_clip's exact resize; at 4000x3000 that is ~5x faster and changes the tensor by ~0.005 on
average. At most `prefetch_batches + 1` batches are decoded ahead, so memory stays flat however
large the drop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import torch
from PIL import Image

from core.ingest.decode import load_rgb

T = TypeVar("T")
Transform = Callable[[Image.Image], torch.Tensor]


def load_tensors(
    source: Path | bytes, transforms: dict[str, Transform], min_side: int | None
) -> dict[str, torch.Tensor]:
    """One file (its bytes, as `core.files` read them, or a path) as the tensors each
    transform makes of it (one decode for all of them)."""
    image = load_rgb(source, min_side=min_side)
    try:
        return {name: transform(image) for name, transform in transforms.items()}
    finally:
        image.close()


@dataclass
class Batch(Generic[T]):
    """Items whose decode succeeded, their results in the same order, and the ones that failed."""

    items: list[T] = field(default_factory=list)
    results: list = field(default_factory=list)
    failures: list[tuple[T, str]] = field(default_factory=list)
    errors: list[tuple[T, Exception]] = field(default_factory=list)  # the failures' exceptions

    def __len__(self) -> int:
        return len(self.items) + len(self.failures)


def prefetched_batches(
    items: Iterable[T],
    load: Callable[[T], object],
    *,
    batch_size: int,
    workers: int,
    prefetch_batches: int = 2,
    while_first_batch_decodes: Callable[[], None] | None = None,
) -> Iterator[Batch[T]]:
    """Yield batches of `load(item)` in input order while later items decode in the background.

    A failing `load` does not stop the stream: the item lands in its batch's `failures` with the
    error text, so the caller can record it. `while_first_batch_decodes` runs on the calling
    thread once the workers have their first window (e.g. a warm-up forward pass).
    """
    if batch_size < 1 or workers < 1:
        raise ValueError("batch_size and workers must be at least 1")
    window = batch_size * (prefetch_batches + 1)
    source = iter(items)
    pending: deque[tuple[T, Future]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="clip-decode") as pool:

        def fill() -> None:
            while len(pending) < window:
                try:
                    item = next(source)
                except StopIteration:
                    return
                pending.append((item, pool.submit(load, item)))

        try:
            fill()
            if while_first_batch_decodes is not None:
                while_first_batch_decodes()
            batch: Batch[T] = Batch()
            while pending:
                item, future = pending.popleft()
                fill()
                try:
                    result = future.result()
                except Exception as error:  # one bad file must not stop the drop
                    batch.failures.append((item, f"{type(error).__name__}: {error}"))
                    batch.errors.append((item, error))
                else:
                    batch.items.append(item)
                    batch.results.append(result)
                if len(batch) >= batch_size:
                    yield batch
                    batch = Batch()
            if len(batch):
                yield batch
        finally:
            for _, future in pending:
                future.cancel()
