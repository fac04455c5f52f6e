"""The prefill benchmark's accounting, on the tiny Qwen2-VL's own template and tokenizer (the
real-server run itself is `make bench`; the cache reuse is asserted in tests/integration)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from benchmarks.prefill import (
    Prompts,
    failed_rows,
    make_photos,
    measure_client,
    summarize,
    table,
)
from core.tasks.registry import TASKS
from core.vlm.tiny_models import ensure_tiny_qwen2_vl
from core.vlm.types import ExtractionResult
from resources.model_cache import default_model_cache

VISION = 2255


def _rows(prompts: Prompts, cached: list[int | None]) -> dict:
    tasks = list(TASKS.values())
    results = {}
    for task, hit in zip(tasks, cached, strict=True):
        _, length = prompts.layout(task, "image_first")
        results[task.name] = ExtractionResult(
            image_id="a", status="ok", prompt_tokens=length - 1 + VISION, cached_tokens=hit
        )
    return {"a": results}


def test_photos_are_distinct_real_size_jpegs(tmp_path: Path):
    photos = make_photos(tmp_path, 3)
    assert len({p.data for p in photos}) == 3
    assert all(Image.open(p.path).size == (1536, 1152) for p in photos)


def test_encoder_passes_and_computed_tokens_come_from_the_servers_cached_counts():
    prompts = Prompts(ensure_tiny_qwen2_vl(Path(default_model_cache()), photo=True))
    tasks = list(TASKS.values())
    through_image = [prompts.layout(t, "image_first")[0] + VISION for t in tasks]
    # the first task computed everything; the others found system prompt + image cached
    rows = _rows(prompts, [0, through_image[1], through_image[2]])
    per_image, statuses = measure_client(prompts, rows, "image_first")
    (row,) = per_image
    assert row["passes"] == 1 and row["vision"] == VISION and statuses["ok"] == 3
    assert row["computed"] == row["prompt"] - through_image[1] - through_image[2]
    # reuse up to the image's end computes the bound plus the few tokens after the image that
    # the tasks' prompts share (the real server caches those too)
    assert row["bound"] < row["computed"] <= 1.02 * row["bound"]
    # one token short of the image's end: the encoder had to run again
    rows = _rows(prompts, [0, through_image[1] - 1, through_image[2]])
    assert measure_client(prompts, rows, "image_first")[0][0]["passes"] == 2


def test_a_server_without_cached_tokens_is_not_reported_never_guessed(capsys):
    prompts = Prompts(ensure_tiny_qwen2_vl(Path(default_model_cache()), photo=True))
    per_image, statuses = measure_client(prompts, _rows(prompts, [None] * 3), "image_first")
    result = summarize("x", per_image, 10.0, {}, {}, statuses)
    assert result["computed_prompt_tokens_per_image"] is None
    assert result["vision_encoder_passes_per_image"] is None
    assert result["bound_prompt_tokens_per_image"] > VISION
    table({"x": result})
    assert "not reported" in capsys.readouterr().out


def test_failed_rows_are_named_with_their_error():
    ok = ExtractionResult(image_id="a", status="ok")
    lost = ExtractionResult(image_id="b", status="error", error="ReadTimeout: no answer in 600 s")
    rows = {"a": {"t1": ok}, "b": {"t1": ok, "t2": lost}}
    assert failed_rows(rows) == ["b t2: error: ReadTimeout: no answer in 600 s"]
