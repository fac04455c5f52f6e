"""The transformers backend's per-field confidence: the log_softmax of its processed scores (after
the grammar's mask, as SGLang reports them), through the same span -> confidence code."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from core.tasks.registry import get_task
from core.vlm.confidence import field_confidences, value_spans
from core.vlm.standin import STANDIN_MODEL_ID, ensure_standin
from core.vlm.transformers_backend import TransformersBackend
from core.vlm.types import ImageInput
from orchestration.settings import REPO_ROOT
from resources.model_cache import default_model_cache

SAMPLES = sorted((REPO_ROOT / "data" / "samples").glob("*.jpg"))
TASKS = ("age_gender", "basketball_action")


@pytest.fixture(scope="module")
def standin_path() -> Path:
    return ensure_standin(Path(default_model_cache()))


def test_recorded_logprobs_are_log_softmax_of_the_scores_after_the_grammar_mask(standin_path):
    """An independent `generate(output_scores=True)` with the same grammar: the backend's token
    logprobs are log_softmax of those processed scores at the chosen tokens, stop token last."""
    import torch
    from xgrammar.contrib.hf import LogitsProcessor

    from core.ingest.decode import load_rgb

    backend = TransformersBackend(standin_path, model_id=STANDIN_MODEL_ID, threads=1)
    task = get_task("age_gender")
    picture = load_rgb(SAMPLES[0].read_bytes(), min_side=backend.min_image_side)
    prompt = backend.prompt(task)
    budget = task.max_completion_tokens
    text, finish, _, _, tokens = backend.generate([picture], prompt, task.schema_json, budget)[0]
    assert finish == "stop" and tokens is not None

    inputs = backend._processor(images=[picture], text=[prompt], return_tensors="pt")
    with torch.inference_mode():
        out = backend._model.generate(
            **inputs,
            max_new_tokens=budget,
            do_sample=False,
            logits_processor=[LogitsProcessor(backend.grammar(task.schema_json))],
            pad_token_id=backend._processor.tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_scores=True,
        )
    chosen = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    expected = [
        float(torch.log_softmax(score[0].float(), dim=-1)[token])
        for score, token in zip(out.scores, chosen, strict=True)
    ]
    masked = [int(torch.isinf(score[0]).sum()) for score in out.scores]
    assert all(m > 0 for m in masked)  # the grammar's mask was applied to these scores
    assert len(tokens) == len(chosen)  # the answer's tokens and its stop token
    assert [lp for _, lp in tokens] == pytest.approx(expected, abs=1e-5)
    assert b"".join(piece for piece, _ in tokens).startswith(text.encode())
    # and the confidences are exp(sum) over each value's tokens
    confidence = field_confidences(text, tokens)
    assert confidence is not None and set(confidence) == set(value_spans(text))
    data, start = text.encode(), 0
    bounds = []
    for piece, _ in tokens:
        bounds.append((start, start + len(piece)))
        start += len(piece)
    for path, (a, b) in value_spans(data).items():
        total = sum(expected[i] for i, (s, e) in enumerate(bounds) if s < b and e > a)
        assert confidence[path] == pytest.approx(math.exp(total), rel=1e-4), path


def test_extract_gives_every_ok_answer_its_confidences_shared_prefix_or_not(standin_path):
    """The shared-prefix path and one generate per task give the same confidences; every `ok`
    answer has one per value, in (0, 1]; failed answers have none."""
    images = [
        ImageInput(image_id=f"img{i}", path=p, data=p.read_bytes())
        for i, p in enumerate(SAMPLES[:2])
    ]
    tasks = [get_task(name) for name in TASKS]
    found = {}
    for share in (True, False):
        backend = TransformersBackend(
            standin_path, model_id=STANDIN_MODEL_ID, threads=1, batch_size=2,
            share_image_prefix=share,
        )  # fmt: skip
        prepared = backend.prepare(images)
        found[share] = backend.extract_tasks([(task, prepared) for task in tasks])
    answered = 0
    for mine, theirs in zip(found[True], found[False], strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert a.raw_text == b.raw_text
            if a.status != "ok":
                assert a.confidence is None
                continue
            answered += 1
            assert a.confidence is not None and b.confidence is not None
            assert set(a.confidence) == set(value_spans(a.raw_text or ""))
            for path, value in a.confidence.items():
                assert value is not None and 0 < value <= 1
                assert value == pytest.approx(b.confidence[path], rel=1e-3)
    assert answered  # at least one ok answer was checked
