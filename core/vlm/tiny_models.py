"""A tiny random-weight Qwen2-VL, built locally, that the real SGLang server serves on CPU.

No model hub is reachable here, so the real-server tests and `make sglang-demo` need a model made
on this machine. Qwen2-VL because SGLang 0.5.23's model registry serves
`Qwen2VLForConditionalGeneration` on its CPU engine (see docs/extraction.md for the LLaVA-family
check). The checkpoint is a normal HF directory (config, safetensors, processor, tokenizer with a
chat template) that SGLang loads like downloaded weights; its answers are meaningless.

The byte-level BPE tokenizer is trained here on the bundled spec's prompt text (always that spec,
so the checkpoint does not depend on IMAGE_PIPELINE_LABELS; another spec's text still tokenizes,
byte by byte where it must), with a vocabulary large enough that every bundled task's prompt plus
twice its token budget (the truncation retry) fits `CONTEXT_LENGTH`: a 400-token vocabulary made
the longest bundled prompt ~900 tokens. A spec whose prompts do not fit is refused before any
image is sent (`core.labels.context`).

    python -m core.vlm.tiny_models OUT_DIR           # writes OUT_DIR/tiny-qwen2-vl-v1
    python -m core.vlm.tiny_models OUT_DIR photo     # writes OUT_DIR/tiny-qwen2-vl-photo-v1

Two variants share the weights' shapes and the tokenizer; only the image limits differ. `tiny`
(the tests' default) caps an image at 16 vision tokens so prompts stay short. `photo` keeps
production pixel limits: Qwen2-VL's 28-px tokens with `max_pixels` such that a 1536x1152 photo
is 55x41 = 2,255 vision tokens, in a 4,096-token context (image + instruction + twice the
budget), so prefill and prefix-cache measurements see realistic vision-token counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.vlm.model_cache import (
    MARKER,
    chat_template,
    save_atomically,
    spec_corpus,
    train_bpe,
)
from core.vlm.prompt import SYSTEM_PROMPT

TINY_QWEN2_VL_VERSION = 1
TINY_QWEN2_VL_ID = f"standin/tiny-qwen2-vl-v{TINY_QWEN2_VL_VERSION}"
CONTEXT_LENGTH = 2048  # --context-length of the servers we launch on it
# The `photo` variant: production pixel limits (a 1536x1152 photo -> 1540x1148 px = 2,255 tokens).
PHOTO_VERSION = 1
TINY_QWEN2_VL_PHOTO_ID = f"standin/tiny-qwen2-vl-photo-v{PHOTO_VERSION}"
PHOTO_MAX_PIXELS = 2304 * 28 * 28
PHOTO_CONTEXT_LENGTH = 4096
VOCAB_SIZE = 2048
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"

# Qwen2-VL's chat layout: an image part becomes the vision placeholder where it stands.
CHAT_TEMPLATE = chat_template(IMAGE_PLACEHOLDER)


def _corpus() -> list[str]:
    instructions, schemas, words = spec_corpus()
    colours = "red blue green white black yellow grey dark light navy orange pink purple brown"
    lines = [SYSTEM_PROMPT, colours, '0123456789 abcdefghijklmnopqrstuvwxyz {}[]:,"']
    lines += instructions
    lines += schemas
    lines += [json.dumps({"value": w}, separators=(",", ":")) for w in words]
    return lines * 8


def build_tokenizer():
    """Byte-level BPE with Qwen's special tokens and the chat template above."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = train_bpe(_corpus(), VOCAB_SIZE, SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_qwen2_vl(target: Path, *, seed: int = 0, photo: bool = False) -> Path:
    """Write the checkpoint to `target` atomically (a half-built dir never appears); `photo`
    gives it production pixel limits instead of the 16-token cap."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    vocab = -(-len(tokenizer) // 64) * 64
    mrope = [2, 3, 3]  # sums to head_dim / 2 = (64 / 4) / 2
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2 * (PHOTO_CONTEXT_LENGTH if photo else CONTEXT_LENGTH),
            "rope_scaling": {"type": "mrope", "mrope_section": mrope},
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": mrope,
                "rope_theta": 10000.0,
            },
            "eos_token_id": ids["<|im_end|>"],
            "bos_token_id": ids["<|endoftext|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "torch_dtype": "float32",
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_chans": 3,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"],
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32).eval()
    # `tiny`: at most 16 patches of 28 px, an image is 4 to 16 tokens, so prompts stay short.
    # `photo`: up to 2,304 tokens of 28 px, as a production Qwen2-VL server would see a photo.
    max_pixels = PHOTO_MAX_PIXELS if photo else 28 * 28 * 16
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=max_pixels)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "generation_config.json").write_text(
            json.dumps({"eos_token_id": ids["<|im_end|>"], "max_new_tokens": 32})
        )

    model_id = TINY_QWEN2_VL_PHOTO_ID if photo else TINY_QWEN2_VL_ID
    marker = {"model_id": model_id, "seed": seed, "random_weights": True}
    return save_atomically(target, write, marker)


def ensure_tiny_qwen2_vl(cache_dir: Path, *, photo: bool = False) -> Path:
    """The checkpoint's directory under the model cache `cache_dir`, built on first use."""
    name = (
        f"tiny-qwen2-vl-photo-v{PHOTO_VERSION}"
        if photo
        else f"tiny-qwen2-vl-v{TINY_QWEN2_VL_VERSION}"
    )
    target = Path(cache_dir) / name
    if not (target / MARKER).exists():
        build_tiny_qwen2_vl(target, photo=photo)
    return target


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["photo"]):
        raise SystemExit("usage: python -m core.vlm.tiny_models MODEL_CACHE_DIR [photo]")
    print(ensure_tiny_qwen2_vl(Path(sys.argv[1]), photo=sys.argv[2:] == ["photo"]))
