"""The in-process VLM on a GPU: old prompt layout vs the chosen one, with a full-size Qwen2-VL-2B.

No model hub: the model is `Qwen2VLForConditionalGeneration` built from Qwen2-VL-2B's config
(values written below) with random weights, in bfloat16 on CUDA; the tokenizer is a byte-level
BPE trained here on the prompts (its special-token ids are put in the config), the image
processor is transformers' Qwen2-VL one with Qwen2-VL's 28-px tokens and `max_pixels` so a
1536x1152 photo is 2,255 vision tokens. Random weights: answers are meaningless and every
answer is forced to `--new-tokens` tokens, so both layouts decode the same amount; what is
measured is prefill, vision encoding and decoding cost.

- `old`: instruction first, one batched `generate` per task over `--batch` images (what the
  transformers backend did before: every task encodes and prefills every image again);
- `chosen`: image first; per batch of `--batch` images, their vision encoding and prefill done
  once, every task continued as a batch from a copy of that KV prefix
  (`core/vlm/shared_prefix.py`, what the backend does now).

Imports only torch, transformers, numpy, PIL and `core/vlm/shared_prefix.py` +
`core/vlm/model_cache.py` (no pydantic, xgrammar, dagster, duckdb): runs on a bare GPU image.

    python benchmarks/gpu_vlm.py --images 32 --out gpu_vlm.json        # CUDA, Qwen2-VL-2B size
    python benchmarks/gpu_vlm.py --tiny --images 2 --device cpu          # the same path, tiny
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.vlm.model_cache import chat_template, train_bpe
from core.vlm.shared_prefix import generate_shared

SYSTEM_PROMPT = "You label photographs. You answer with JSON only."
# The three built-in tasks' instructions (core/tasks/*, as of this benchmark), as plain text.
_RULE = "\n\nUse only the allowed values. Output JSON only: no prose, no markdown, no extra keys."
_KEYS = "\n\nAnswer with one compact JSON object with these keys:\n"
_AGES = 'one of "18-20", "21-30", "31-40", "41-50", "51-60"'
INSTRUCTIONS = [
    "Describe the scenery of the image and the people in it."
    + _KEYS
    + '- scenery: one of "blue_sky", "cloudy", "golden_hour", "indoors", "night_time" (the '
    "setting and light of the whole picture)\n- people: a list of at most 8 objects (the most "
    "prominent people, largest first; [] if none), each with:\n  - age_group: "
    + _AGES
    + " (the person's apparent age in years)\n  - shirt_color: string matching "
    "^[a-z][a-z -]{0,19}$ (colour of the shirt or top in plain lower-case words, e.g. dark blue)"
    + _RULE,
    "Look at the most prominent person in the image."
    + _KEYS
    + "- age_group: "
    + _AGES
    + ' (apparent age in years of the most prominent person)\n- gender: one of "female", "male" '
    "(apparent gender of the same person)" + _RULE,
    "This is a basketball photo. Classify the action of the player with the ball."
    + _KEYS
    + '- action: one of "shooting", "dribbling", "passing" (what the player with the ball is '
    "doing)" + _RULE,
]
SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|image_pad|>",
    "<|vision_end|>",
    "<|video_pad|>",
]
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
MAX_PIXELS = 2304 * 28 * 28  # a 1536x1152 photo -> 1540x1148 px -> 55 x 41 = 2,255 tokens

# Qwen2-VL-2B-Instruct's config.json (architecture only; token ids come from our tokenizer).
QWEN2_VL_2B_TEXT = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "mrope_section": [16, 24, 24],
    "tie_word_embeddings": True,
}
QWEN2_VL_2B_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 1536,
    "num_heads": 16,
    "mlp_ratio": 4,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "in_chans": 3,
}
TINY_TEXT = QWEN2_VL_2B_TEXT | {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 2048,
    "mrope_section": [2, 3, 3],
    "tie_word_embeddings": False,
}
TINY_VISION = QWEN2_VL_2B_VISION | {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2}


def build(tiny: bool, device: str, dtype: Any) -> tuple[Any, Any, Any, dict[str, int]]:
    """(model, tokenizer, image processor, special ids): random weights, nothing downloaded."""
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
    )

    corpus = [SYSTEM_PROMPT, *INSTRUCTIONS, '{}[]:,"0123456789 abcdefghijklmnopqrstuvwxyz'] * 8
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(corpus, 2048, SPECIAL),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template(PLACEHOLDER),
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}
    text, vision = (TINY_TEXT, TINY_VISION) if tiny else (QWEN2_VL_2B_TEXT, QWEN2_VL_2B_VISION)
    section = text["mrope_section"]
    text_config = {k: v for k, v in text.items() if k not in ("mrope_section", "rope_theta")}
    text_config |= {
        "rope_scaling": {"type": "mrope", "mrope_section": section},
        "rope_parameters": {
            "rope_type": "default",
            "mrope_section": section,
            "rope_theta": text["rope_theta"],
        },
        "eos_token_id": ids["<|im_end|>"],
        "bos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(config).to(dtype).eval()
    processor = Qwen2VLImageProcessor(min_pixels=4 * 28 * 28, max_pixels=MAX_PIXELS)
    return model, tokenizer, processor, ids


def photos(count: int, size: tuple[int, int]) -> list[Image.Image]:
    """Photo-like test pictures: smooth gradients plus grain, a different one each."""
    rng = np.random.default_rng(0)
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    out = []
    for i in range(count):
        base = np.stack([x * (i % 5 + 1) / 5, y, (x + y) / 2], axis=-1) * 255
        noisy = base + rng.normal(0, 12, base.shape)
        out.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return out


class Encoder:
    """Prompt + image -> model inputs, as Qwen2VLProcessor does (without its video part, which
    would need torchvision): the image pad token expanded to the image's vision tokens."""

    def __init__(self, model: Any, tokenizer: Any, processor: Any, ids: dict[str, int]) -> None:
        self.tokenizer, self.processor, self.ids = tokenizer, processor, ids
        self.device = model.device
        self.wants_token_types = "mm_token_type_ids" in inspect.signature(model.forward).parameters
        self._vision: dict[tuple[int, ...], Any] = {}

    def text(self, instruction: str, image_first: bool) -> str:
        image, words = {"type": "image"}, {"type": "text", "text": instruction}
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [image, words] if image_first else [words, image]},
        ]
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def batch(self, pictures: list[Image.Image], text: str) -> dict[str, Any]:
        """Left-padded batch of the same prompt over several pictures."""
        import torch

        # The image processor runs on the CPU; both layouts reuse its output per batch of
        # pictures, so the comparison is the model's work on the GPU.
        key = tuple(id(p) for p in pictures)
        if key not in self._vision:
            self._vision[key] = self.processor(images=pictures, return_tensors="pt")
        vision = self._vision[key]
        merge = self.processor.merge_size**2
        pad = self.ids["<|image_pad|>"]
        base = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        rows = []
        for grid in vision["image_grid_thw"]:
            at = base.index(pad)
            rows.append(base[:at] + [pad] * (int(grid.prod()) // merge) + base[at + 1 :])
        width = max(len(r) for r in rows)
        filler = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[filler] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        out = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "pixel_values": vision["pixel_values"],
            "image_grid_thw": vision["image_grid_thw"],
        }
        if self.wants_token_types:
            out["mm_token_type_ids"] = (input_ids == pad).long()
        return {k: v.to(self.device) for k, v in out.items()}


def run_old(model: Any, enc: Encoder, pictures: list, batch: int, new_tokens: int) -> int:
    """Instruction first; per task, batches of images; each task encodes every image again."""
    import torch

    tokens = 0
    for instruction in INSTRUCTIONS:
        text = enc.text(instruction, image_first=False)
        for start in range(0, len(pictures), batch):
            inputs = enc.batch(pictures[start : start + batch], text)
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=enc.tokenizer.pad_token_id,
                )
            tokens += int(inputs["attention_mask"].sum())
            del out
    return tokens


def run_chosen(model: Any, enc: Encoder, pictures: list, batch: int, new_tokens: int) -> int:
    """Image first; per batch of images, one prefill of their shared prefix, then each task's
    suffix and answer as a batch from a copy of that KV cache."""
    tokens = 0
    texts = [enc.text(instruction, image_first=True) for instruction in INSTRUCTIONS]
    for start in range(0, len(pictures), batch):
        chunk = pictures[start : start + batch]
        encoded = [enc.batch(chunk, text) for text in texts]
        _, _, shared = generate_shared(
            model,
            encoded,
            max_new_tokens=[new_tokens] * len(texts),
            pad_token_id=enc.tokenizer.pad_token_id,
            min_new_tokens=new_tokens,
        )
        tokens += sum(int(e["attention_mask"].sum()) for e in encoded)
        tokens -= int(encoded[0]["attention_mask"][:, :shared].sum()) * (len(texts) - 1)
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", default="1536x1152")
    parser.add_argument("--batch", type=int, default=8, help="images per generate (old layout)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny config (CPU check of the path)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    import transformers

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    started = time.perf_counter()
    model, tokenizer, processor, ids = build(args.tiny, args.device, dtype)
    enc = Encoder(model, tokenizer, processor, ids)
    w, h = (int(v) for v in args.size.split("x"))
    pictures = photos(args.images, (w, h))
    for start in range(0, len(pictures), args.batch):  # CPU preprocessing, not timed
        enc.batch(pictures[start : start + args.batch], enc.text(INSTRUCTIONS[0], True))
    vision_tokens = (
        int(processor(images=pictures[:1], return_tensors="pt")["image_grid_thw"][0].prod()) // 4
    )
    print(f"built in {time.perf_counter() - started:.1f}s; {vision_tokens} vision tokens per image")

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    encoded_images = [0]

    def count_images(_module: Any, args: tuple, kwargs: dict) -> None:
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        encoded_images[0] += int(grid.shape[0]) if grid is not None else 0

    model.model.visual.register_forward_pre_hook(count_images, with_kwargs=True)
    # Warm-up (kernels, allocator) on two images, not measured.
    run_old(model, enc, pictures[:2], args.batch, 4)
    run_chosen(model, enc, pictures[:2], args.batch, 4)
    results: dict[str, Any] = {}
    for name in ("old", "chosen"):
        sync()
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        encoded_images[0] = 0
        t0 = time.perf_counter()
        if name == "old":
            computed = run_old(model, enc, pictures, args.batch, args.new_tokens)
        else:
            computed = run_chosen(model, enc, pictures, args.batch, args.new_tokens)
        sync()
        seconds = time.perf_counter() - t0
        results[name] = {
            "images_per_s": round(args.images / seconds, 3),
            "seconds": round(seconds, 2),
            "prefilled_tokens_per_image": round(computed / args.images, 1),
            "vision_encoder_passes_per_image": round(encoded_images[0] / args.images, 2),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if args.device.startswith("cuda")
            else None,
        }
        print(name, results[name], flush=True)
    report = {
        "model": "Qwen2-VL tiny config" if args.tiny else "Qwen2-VL-2B config, random weights",
        "dtype": str(dtype),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "images": args.images,
        "size": args.size,
        "vision_tokens_per_image": vision_tokens,
        "tasks": len(INSTRUCTIONS),
        "new_tokens_per_task": args.new_tokens,
        "old_batch": args.batch,
        "layouts": results,
        "speedup": round(results["chosen"]["images_per_s"] / results["old"]["images_per_s"], 3),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
