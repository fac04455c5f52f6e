"""Decoding for the model: draft-reduced JPEGs stay close to full decodes; the window is bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import open_clip
import pytest
import torch

from benchmarks.ingest import _base_jpeg
from core.clip.decoding import load_tensors, prefetched_batches
from core.ingest.decode import load_rgb

INPUT = 224


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jpeg") / "large.jpg"
    path.write_bytes(_base_jpeg(2400, 1800, seed=3))
    return path


def test_draft_decoding_is_smaller_but_close_to_the_full_decode(large_jpeg: Path):
    preprocess = open_clip.image_transform(INPUT, is_train=False)
    drafted = load_rgb(large_jpeg, min_side=2 * INPUT)
    assert min(drafted.size) >= 2 * INPUT
    assert drafted.size[0] < 2400  # really reduced: 1/2 or 1/4 DCT scale
    full = preprocess(load_rgb(large_jpeg))
    fast = load_tensors(large_jpeg, {"global": preprocess}, 2 * INPUT)["global"]
    assert fast.shape == full.shape == (3, INPUT, INPUT)
    difference = (fast - full).abs()
    assert difference.mean() < 0.02  # normalised units; pixel noise alone is ~0.1
    assert torch.nn.functional.cosine_similarity(fast.flatten(), full.flatten(), dim=0) > 0.999


def test_batches_keep_input_order_and_isolate_failures():
    def load(n: int) -> int:
        if n == 5:
            raise OSError("broken file")
        time.sleep(0.001 * (n % 3))
        return n * 10

    warmed: list[str] = []
    batches = list(
        prefetched_batches(
            range(11),
            load,
            batch_size=4,
            workers=3,
            while_first_batch_decodes=lambda: warmed.append("model"),
        )
    )
    assert warmed == ["model"]
    assert [len(b) for b in batches] == [4, 4, 3]
    assert [r for b in batches for r in b.results] == [n * 10 for n in range(11) if n != 5]
    assert [item for b in batches for item, _ in b.failures] == [5]
    assert "broken file" in batches[1].failures[0][1]


def test_at_most_the_window_is_decoded_ahead_of_the_consumer():
    started: list[int] = []
    lock = threading.Lock()

    def load(n: int) -> int:
        with lock:
            started.append(n)
        return n

    stream = prefetched_batches(range(1000), load, batch_size=8, workers=2, prefetch_batches=2)
    next(stream)
    time.sleep(0.05)
    assert len(started) <= 8 + 8 * 3  # the batch handed out plus a full window, not 1000
    stream.close()
