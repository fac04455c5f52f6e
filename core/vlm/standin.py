"""A tiny random-weight LLaVA built locally, for tests and the offline demo.

No model hub is reachable from our machines, so this writes a real checkpoint directory (config,
safetensors weights, processor, tokenizer with a chat template) that loads through
`from_pretrained(path)` exactly like downloaded weights: a 2-layer CLIP vision tower (32 px,
patch 8), a 2-layer Llama text model and a byte-level BPE tokenizer trained here with the
`tokenizers` library. Its outputs are meaningless; every row records its `model_id`
(`standin/tiny-llava-v<N>`) so they are never mistaken for a real model's.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.vlm.model_cache import (
    MARKER,
    chat_template,
    save_atomically,
    spec_corpus,
    train_bpe,
)

# v2: a 4096-token context (v1: 512), so a user's spec's prompts fit; same tokenizer and weights.
STANDIN_VERSION = 2
STANDIN_MODEL_ID = f"standin/tiny-llava-v{STANDIN_VERSION}"
IMAGE_SIZE = 32
PATCH_SIZE = 8
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]

# chatml-llava's layout (the template SGLang uses for LLaVA-OneVision): parts in content order.
CHAT_TEMPLATE = chat_template(IMAGE_TOKEN)


def _corpus() -> list[str]:
    instructions, schemas, words = spec_corpus()
    colours = "red blue green white black yellow grey dark light navy orange pink purple brown"
    lines = [*instructions]
    lines += schemas
    lines += [json.dumps({"value": w}, separators=(",", ":")) for w in words]
    lines += [colours, '{"a":[{"b":"c d"}],"e":"f"}', "0123456789 abcdefghijklmnopqrstuvwxyz"]
    return lines * 4


def _build_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tokenizer = train_bpe(_corpus(), 600, SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def build_standin(target: Path, *, seed: int = 0) -> Path:
    """Write the stand-in checkpoint to `target` (atomically: a half-built dir never appears)."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = _build_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    num_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=num_patches,
        vision_feature_select_strategy="default",  # drops CLS: num_patches features per image
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which "default" then drops again
        chat_template=CHAT_TEMPLATE,
    )

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)

    marker = {"model_id": STANDIN_MODEL_ID, "seed": seed, "random_weights": True}
    return save_atomically(target, write, marker)


def ensure_standin(cache_dir: Path) -> Path:
    """The stand-in's directory under the model cache `cache_dir`, built on first use."""
    target = Path(cache_dir) / f"tiny-llava-v{STANDIN_VERSION}"
    if not (target / MARKER).exists():
        build_standin(target)
    return target
