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
import os
import shutil
import tempfile
from pathlib import Path

from core.tasks.registry import TASKS
from core.tasks.vocabulary import AGE_BINS, BASKETBALL_ACTIONS, GENDERS, SCENERY

STANDIN_VERSION = 1
STANDIN_MODEL_ID = f"standin/tiny-llava-v{STANDIN_VERSION}"
IMAGE_SIZE = 32
PATCH_SIZE = 8
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]

# chatml-llava's layout (the template SGLang uses for LLaVA-OneVision): parts in content order.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}\n{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def default_cache_dir() -> Path:
    from orchestration.settings import REPO_ROOT

    return Path(os.environ.get("IMAGE_PIPELINE_MODEL_CACHE", REPO_ROOT / "data" / "models"))


def _corpus() -> list[str]:
    words = [*SCENERY, *AGE_BINS, *GENDERS, *BASKETBALL_ACTIONS]
    colours = "red blue green white black yellow grey dark light navy orange pink purple brown"
    lines = [task.instruction for task in TASKS.values()]
    lines += [task.schema_json for task in TASKS.values()]
    lines += [json.dumps({"value": w}, separators=(",", ":")) for w in words]
    lines += [colours, '{"a":[{"b":"c d"}],"e":"f"}', "0123456789 abcdefghijklmnopqrstuvwxyz"]
    return lines * 4


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
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
        max_position_embeddings=512,
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
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "STANDIN.json").write_text(
            json.dumps({"model_id": STANDIN_MODEL_ID, "seed": seed, "random_weights": True})
        )
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "STANDIN.json").exists():  # lost a race to a complete build: fine
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_standin(cache_dir: Path | None = None) -> Path:
    """The stand-in's directory under the model cache, built on first use."""
    target = Path(cache_dir or default_cache_dir()) / f"tiny-llava-v{STANDIN_VERSION}"
    if not (target / "STANDIN.json").exists():
        build_standin(target)
    return target
