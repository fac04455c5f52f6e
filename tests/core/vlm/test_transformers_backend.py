"""The in-process backend's layout: each image encoded and prefilled once for all its tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.tasks.registry import TASKS
from core.vlm.standin import STANDIN_MODEL_ID, ensure_standin
from core.vlm.tiny_models import TINY_QWEN2_VL_ID, ensure_tiny_qwen2_vl
from core.vlm.transformers_backend import TransformersBackend
from core.vlm.types import ImageInput, PreparedImage
from orchestration.settings import REPO_ROOT
from resources.model_cache import default_model_cache

SAMPLES = sorted((REPO_ROOT / "data" / "samples").glob("*.jpg"))
MODELS = {
    "llava": lambda: (ensure_standin(Path(default_model_cache())), STANDIN_MODEL_ID),
    "qwen2_vl": lambda: (ensure_tiny_qwen2_vl(Path(default_model_cache())), TINY_QWEN2_VL_ID),
}


def _vision_calls(backend: TransformersBackend) -> list[int]:
    """Counts the vision tower's forward passes."""
    backend._load()
    inner = backend._model.model
    tower = getattr(inner, "vision_tower", None) or inner.visual
    calls = [0]
    tower.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _images(count: int) -> list[ImageInput]:
    return [
        ImageInput(image_id=f"img{i}", path=path, data=path.read_bytes())
        for i, path in enumerate(SAMPLES[:count])
    ]


@pytest.mark.parametrize("family", sorted(MODELS))
def test_shared_prefix_answers_as_one_generate_per_task_with_one_vision_pass_per_image(family):
    """Greedy answers from the image's shared prefill are the ones a full generate per task
    gives (same tokens, same rows), with the vision tower run once per batch of images instead of
    once per image and task; later tasks report the shared prefix as cached tokens."""
    path, model_id = MODELS[family]()
    tasks = list(TASKS.values())
    shared = TransformersBackend(
        path, model_id=model_id, threads=1, batch_size=2, max_completion_tokens=24
    )
    separate = TransformersBackend(
        path, model_id=model_id, threads=1, batch_size=1, max_completion_tokens=24,
        share_image_prefix=False,
    )  # fmt: skip
    images = _images(2)
    counts = {}
    outputs = {}
    for name, backend in (("shared", shared), ("separate", separate)):
        calls = _vision_calls(backend)
        prepared = backend.prepare(images)
        outputs[name] = backend.extract_tasks([(task, prepared) for task in tasks])
        counts[name] = calls[0]
    # shared: one vision pass for the batch of both images; separate: one per image and task
    assert counts == {"shared": 1, "separate": len(images) * len(tasks)}
    for mine, theirs in zip(outputs["shared"], outputs["separate"], strict=True):
        assert [(r.image_id, r.status, r.raw_text, r.prompt_tokens) for r in mine] == [
            (r.image_id, r.status, r.raw_text, r.prompt_tokens) for r in theirs
        ]
    for index in range(len(images)):
        cached = [outputs["shared"][t][index].cached_tokens for t in range(len(tasks))]
        assert cached[0] == 0 and all(c > 0 for c in cached[1:]), cached


def test_an_image_that_cannot_be_read_fails_its_own_rows_only():
    path, model_id = MODELS["qwen2_vl"]()
    backend = TransformersBackend(path, model_id=model_id, threads=1, max_completion_tokens=16)
    good = backend.prepare(_images(1))
    bad = PreparedImage(image=ImageInput(image_id="bad", path=SAMPLES[0]), error="cannot read")
    tasks = list(TASKS.values())[:2]
    outputs = backend.extract_tasks([(task, [bad, *good]) for task in tasks])
    for results in outputs:
        assert [r.image_id for r in results] == ["bad", "img0"]
        assert results[0].status == "error" and results[0].error == "cannot read"
        assert results[1].status in ("ok", "invalid", "truncated")
