"""Images, several prompts each, one prefill per image: generation from a shared KV prefix.

With the image first (`core/vlm/prompt.py`), every task's prompt for one image starts with the
same tokens: system turn, user header, the image's vision tokens. This runs the model (and its
vision encoder) once over that common prefix and continues each prompt from a copy of its KV
cache, so the image is encoded and prefilled once per image, not once per task; each prompt then
computes only its own suffix (instruction and turn framing) and its answer. It is the in-process
counterpart of SGLang's radix cache, with the same greedy decoding as a plain `generate`.

Works for decoder models whose generate accepts `past_key_values` shorter than `input_ids` and
that build the image's positions in the prefix pass: LLaVA (1-D positions) and Qwen2-VL (its
3-D rope offset after the image is computed in the prefix pass and reused for the text after
it). Imports only torch and transformers, so `benchmarks/gpu_vlm.py` can use it on a machine
without the pipeline's other dependencies.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

# Processor outputs with one entry per token: cut to the prefix for the prefix pass.
PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens all sequences start with."""
    n = 0
    for column in zip(*sequences, strict=False):
        if any(value != column[0] for value in column[1:]):
            break
        n += 1
    return n


def prefill(model: Any, encoded: dict[str, Any], length: int) -> Any:
    """Run the model over the first `length` tokens of an encoded batch (images included);
    returns its KV cache."""
    import torch

    inputs = {
        key: value[:, :length] if key in PER_TOKEN_KEYS else value
        for key, value in encoded.items()
        if key not in ("input_ids", "attention_mask")
    }
    ids = encoded["input_ids"][:, :length]
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **inputs)
    return out.past_key_values


def generate_shared(
    model: Any,
    encoded: Sequence[dict[str, Any]],
    *,
    max_new_tokens: Sequence[int],
    logits_processors: Sequence[list[Any]] | None = None,
    pad_token_id: int | None = None,
    output_scores: bool = False,
    **generate_kwargs: Any,
) -> tuple[list[list[list[int]]], list[list[Any]] | None, int]:
    """Greedy answers of several prompts (one encoding per prompt) over the SAME batch of images,
    prefilling the images' common prefix once.

    Each `encoded[t]` is the processor's left-padded batch of prompt t over the same images in
    the same order. Left padding makes every row's prefix (padding, system turn, image) the same
    for all prompts, since a row's padding depends only on its image, so one prefill of the
    common prefix serves every prompt, and each prompt is then generated as a batch from a copy
    of its KV cache. Returns the new token ids per prompt and row, the per-step processed logits
    per prompt (when `output_scores`) and the prefix length shared.
    """
    import torch

    rows = encoded[0]["input_ids"].shape[0]
    shared = min(
        common_prefix_length([e["input_ids"][row].tolist() for e in encoded]) for row in range(rows)
    )
    # generate needs at least one uncached token per prompt
    shared = min(shared, *(int(e["input_ids"].shape[1]) - 1 for e in encoded))
    cache = prefill(model, encoded[0], shared)
    answers: list[list[list[int]]] = []
    scores: list[list[Any]] | None = [] if output_scores else None
    for index, prompt in enumerate(encoded):
        input_ids = prompt["input_ids"]
        mask = prompt.get("attention_mask")
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask if mask is not None else torch.ones_like(input_ids),
                past_key_values=copy.deepcopy(cache) if index < len(encoded) - 1 else cache,
                max_new_tokens=max_new_tokens[index],
                do_sample=False,
                logits_processor=list(logits_processors[index]) if logits_processors else [],
                pad_token_id=pad_token_id,
                return_dict_in_generate=True,
                output_scores=output_scores,
                **generate_kwargs,
            )
        answers.append(out.sequences[:, input_ids.shape[1] :].tolist())
        if scores is not None:
            scores.append(list(out.scores))
    return answers, scores, shared
