"""A user's spec runs on the local stand-in LLaVA, and a task whose prompt plus token budget
cannot fit the model's context is a spec error (file, line, task) before any image is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from core.labels.context import check_context, plain_prompt_tokens
from core.labels.derive import build_task
from core.labels.loader import SpecError, load_spec
from core.vlm.types import ImageInput
from doubles.sglang_server import standin_backend

PRODUCTS = Path(__file__).resolve().parents[3] / "labels" / "examples" / "products.yaml"


def _image(tmp_path: Path) -> ImageInput:
    path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return ImageInput(image_id="red", path=path, data=path.read_bytes())


def test_a_user_spec_runs_on_the_stand_in_and_fits_its_context(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGE_PIPELINE_LABELS", str(PRODUCTS))
    task = build_task(load_spec(PRODUCTS).task("product"))
    backend = standin_backend()
    (result,) = backend.extract([_image(tmp_path)], task)
    assert result.status in {"ok", "invalid", "truncated"}  # an answer or an honest failure
    assert result.status == "ok" or result.error


def test_a_budget_the_context_cannot_hold_is_a_spec_error_before_any_image(tmp_path, monkeypatch):
    spec = tmp_path / "big.yaml"
    spec.write_text(
        PRODUCTS.read_text().replace("max_completion_tokens: 200", "max_completion_tokens: 5000")
    )
    monkeypatch.setenv("IMAGE_PIPELINE_LABELS", str(spec))
    task = build_task(load_spec(spec).task("product"))
    backend = standin_backend()
    sent: list[object] = []
    monkeypatch.setattr(backend, "generate", lambda *a, **k: sent.append(a) or [])
    with pytest.raises(SpecError) as error:
        backend.extract([_image(tmp_path)], task)
    assert sent == []  # nothing reached the model
    line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if "5000" in text)
    message = str(error.value)
    assert f"big.yaml:{line}:" in message and "task product" in message
    assert "context of 4096 tokens" in message and "answer budget 5000" in message


def test_the_truncation_retry_doubles_the_budget_in_the_check(monkeypatch):
    monkeypatch.setenv("IMAGE_PIPELINE_LABELS", str(PRODUCTS))
    task = build_task(load_spec(PRODUCTS).task("product"))
    count = plain_prompt_tokens(lambda text: len(text.split()))
    prompt = count(task)
    fits = {"context_length": prompt + 10 + 200, "prompt_tokens": count, "image_tokens": 10}
    check_context([task], **fits)
    with pytest.raises(SpecError, match="x 2 \\(the truncation retry\\)"):
        check_context([task], **fits, budget_factor=2)
