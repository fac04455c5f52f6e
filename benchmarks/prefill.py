"""Prefill per image on the real SGLang server: prompt layouts and dispatch against its prefix cache.

A drop of real-size photos (1536x1152 JPEGs made from the bundled samples: tiled, cropped per
image, sensor-like grain, so every image has other pixels) x every registered task goes through
the production client (`SGLangClient`) and run loop (`core.vlm.run.run_batches`) against the
released SGLang 0.5.23 server on this CPU, serving the tiny random-weight Qwen2-VL with
production pixel limits (`core.vlm.tiny_models`, `photo` variant: 2,255 vision tokens per photo),
launched with `--enable-cache-report` and `--enable-metrics`, and with its vision-embedding cache
off (`SGLANG_VLM_CACHE_SIZE_MB=0`), so the vision encoder runs for exactly the requests whose
image is not in the prefix cache (a GPU server's 100 MB cache holds ~14 such images of a 2B
model, fewer than a batch has in flight). The radix cache is flushed before each layout.

Per layout, from the server's own usage fields (`prompt_tokens`, `prompt_tokens_details.
cached_tokens`, as recorded on the rows) and `/metrics` counters:
- prompt tokens, cached tokens and computed (= prompt - cached) tokens per image;
- vision-encoder passes per image: requests whose cached prefix does not cover the image's
  vision tokens (their position comes from the model's own chat template and tokenizer);
- the bound: the image's vision tokens plus each task's own suffix (instruction and turn
  framing), once, the system prompt shared with every other image; computed / bound;
- images/s (all tasks of an image answered), random weights on 2 CPU cores: only the ratios
  between layouts mean anything.

Layouts: `instruction_first` (today before this change: all tasks at once), `image_first`
sent all at once, `image_first_staggered` (an image's other tasks after its first task's answer:
the chosen default), and `combined` (one request per image asking every task under one combined
schema; sent by this benchmark with the client's request settings, since the production client
keeps one request per task). A server that does not report cached tokens gets "not reported".

Usage: python benchmarks/prefill.py [--images 30] [--max-in-flight 4] [--out F] [--url U --api-key K]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import write_json
from core.tasks.base import Task
from core.tasks.registry import TASKS
from core.vlm.metrics import parse_prometheus
from core.vlm.prompt import SYSTEM_PROMPT, Layout, chat_messages
from core.vlm.run import run_batches
from core.vlm.sglang_client import SGLangClient, SGLangClientConfig
from core.vlm.sglang_request import compact_ebnf
from core.vlm.types import ExtractionResult, ImageInput

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted((REPO / "data" / "samples").glob("*.jpg"))
SIZE = (1536, 1152)

# name -> (prompt layout, stagger an image's tasks); `combined` is sent by `run_combined`.
LAYOUTS: dict[str, tuple[Layout, bool]] = {
    "instruction_first": ("instruction_first", False),
    "image_first": ("image_first", False),
    "image_first_staggered": ("image_first", True),
}
TODAY = "instruction_first"
CHOSEN = "image_first_staggered"


def make_photos(folder: Path, count: int) -> list[ImageInput]:
    """`count` distinct 1536x1152 JPEGs: a sample tiled 2x2, cropped at an offset per image,
    with 4% grain (quality 90, like a camera's output after resizing)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for index in range(count):
        source = ImageOps.exif_transpose(Image.open(SAMPLES[index % len(SAMPLES)])).convert("RGB")
        tile = source.resize((SIZE[0] // 2 + 64, SIZE[1] // 2 + 48), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (tile.width * 2, tile.height * 2))
        for x in (0, tile.width):
            for y in (0, tile.height):
                canvas.paste(tile, (x, y))
        dx, dy = (index * 17) % 128, (index * 11) % 96
        photo = np.asarray(canvas.crop((dx, dy, dx + SIZE[0], dy + SIZE[1])), dtype=np.float32)
        photo += rng.normal(0, 0.04 * 255, photo.shape)
        path = folder / f"photo-{index:03d}.jpg"
        Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(path, quality=90)
        data = path.read_bytes()
        out.append(ImageInput(image_id=f"photo-{index:03d}", path=path, data=data))
    return out


class Prompts:
    """Token positions from the served model's own chat template and tokenizer (one image-pad
    token per image; the server expands it to the image's vision tokens)."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.pad = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def layout(self, task: Task, layout: Layout) -> tuple[int, int]:
        """(tokens before the image, prompt tokens with one pad token)."""
        ids = self.tokens(chat_messages(task, "x", layout))
        return ids.index(self.pad), len(ids)

    def bound(self, tasks: list[Task], vision_tokens: int) -> int:
        """Image once + each task's own suffix once; the system turn (and the user header,
        which every prompt starts with) shared with every other image."""
        first = [self.tokens(chat_messages(t, "x", "image_first")) for t in tasks]
        shared = self.tokens(chat_messages(tasks[0], "x", "instruction_first"))
        common_all = _common_prefix([first[0], shared])
        common_image = _common_prefix(first)
        image_span = common_image - common_all + vision_tokens - 1
        return image_span + sum(len(ids) - common_image for ids in first)


def _common_prefix(seqs: list[list[int]]) -> int:
    n = 0
    for column in zip(*seqs, strict=False):
        if len(set(column)) != 1:
            break
        n += 1
    return n


def server_counters(url: str, key: str | None) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        answer = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    except httpx.HTTPError:
        return {}
    return parse_prometheus(answer.text) if answer.status_code == 200 else {}


def flush(url: str, key: str | None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for _ in range(50):
        answer = httpx.post(f"{url}/flush_cache", headers=headers, timeout=30)
        if answer.status_code == 200 and "flushed" in answer.text.lower():
            return
        time.sleep(0.5)
    raise RuntimeError(f"/flush_cache did not flush: {answer.status_code} {answer.text[:200]}")


def run_client(
    url: str, key: str | None, photos: list[ImageInput], layout: Layout, stagger: bool, flight: int
) -> tuple[dict[str, dict[str, ExtractionResult]], float]:
    """Every task over the photos through the production client and run loop."""
    # invalid_retries=0: a re-asked answer's row records only the re-ask, whose prompt is all in
    # the cache, which would hide the first ask's prefill and vision-encoder pass.
    config = SGLangClientConfig(
        base_url=url,
        api_key=key,
        max_in_flight=flight,
        layout=layout,
        stagger_tasks=stagger,
        invalid_retries=0,
    )
    client = SGLangClient(config)
    client.check_ready()
    tasks = list(TASKS.values())
    rows: dict[str, dict[str, ExtractionResult]] = defaultdict(dict)

    def write(task: Task, results: list[ExtractionResult]) -> None:
        for result in results:
            rows[result.image_id][task.name] = result

    started = time.perf_counter()
    run_batches(client, [(task, photos) for task in tasks], write, batch_size=64)
    return rows, time.perf_counter() - started


def combined_messages(tasks: list[Task], url: str) -> tuple[list[dict[str, Any]], str, int]:
    """One request for all tasks: every instruction under its task's key, one combined schema."""
    text = "Answer every task below in one compact JSON object whose keys are the task names.\n"
    text += "\n".join(f"\n## {t.name}\n{t.instruction}" for t in tasks)
    schema = {
        "type": "object",
        "properties": {t.name: t.json_schema for t in tasks},
        "required": [t.name for t in tasks],
        "additionalProperties": False,
    }
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": text},
            ],
        },
    ]
    budget = sum(t.max_completion_tokens for t in tasks) + 8 * len(tasks)
    return messages, json.dumps(schema, separators=(",", ":")), budget


def run_combined(
    url: str, key: str | None, photos: list[ImageInput], model: str, flight: int
) -> tuple[dict[str, dict[str, Any]], float]:
    """One request per image asking all tasks (no retries: a measurement, not the client)."""
    tasks = list(TASKS.values())
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    client = SGLangClient(SGLangClientConfig(base_url=url, api_key=key))
    urls = {p.image.image_id: p.payload for p in client.prepare(photos)}

    async def main() -> dict[str, dict[str, Any]]:
        gate = asyncio.Semaphore(flight)
        async with httpx.AsyncClient(timeout=600, headers=headers) as http:

            async def one(image_id: str) -> tuple[str, dict[str, Any]]:
                messages, schema, budget = combined_messages(tasks, urls[image_id])
                body = {
                    "model": model,
                    "messages": messages,
                    "temperature": 0,
                    "max_completion_tokens": budget,
                    "ebnf": compact_ebnf(schema),
                }
                async with gate:
                    answer = await http.post(f"{url}/v1/chat/completions", json=body)
                return image_id, answer.json() if answer.status_code == 200 else {}

            return dict(await asyncio.gather(*(one(p.image_id) for p in photos)))

    started = time.perf_counter()
    answers = asyncio.run(main())
    return answers, time.perf_counter() - started


def summarize(
    name: str,
    per_image: list[dict[str, Any]],
    seconds: float,
    before: dict[str, float],
    after: dict[str, float],
    statuses: Counter[str],
) -> dict[str, Any]:
    n = len(per_image)
    reported = all(row["cached"] is not None for row in per_image)

    def mean(key: str) -> float | None:
        values = [row[key] for row in per_image]
        return round(sum(values) / n, 1) if n and None not in values else None

    delta = {
        k: after.get(k, 0.0) - before.get(k, 0.0)
        for k in ("sglang:prompt_tokens_total", "sglang:cached_tokens_total")
    }
    computed = mean("computed") if reported else None
    bound = mean("bound")
    return {
        "layout": name,
        "images": n,
        "requests_per_image": mean("requests"),
        "prompt_tokens_per_image": mean("prompt"),
        "cached_tokens_per_image": mean("cached") if reported else None,
        "computed_prompt_tokens_per_image": computed,
        "bound_prompt_tokens_per_image": bound,
        "computed_over_bound": round(computed / bound, 3) if computed and bound else None,
        "vision_encoder_passes_per_image": mean("passes") if reported else None,
        "vision_tokens_per_image": mean("vision"),
        "images_per_s": round(n / seconds, 3) if seconds else None,
        "seconds": round(seconds, 1),
        "statuses": dict(statuses),
        "metrics_prompt_tokens_per_image": round(delta["sglang:prompt_tokens_total"] / n, 1)
        if before
        else None,
        "metrics_computed_prompt_tokens_per_image": round(
            (delta["sglang:prompt_tokens_total"] - delta["sglang:cached_tokens_total"]) / n, 1
        )
        if before
        else None,
    }


def measure_client(
    prompts: Prompts, rows: dict[str, dict[str, ExtractionResult]], layout: Layout
) -> tuple[list[dict[str, Any]], Counter[str]]:
    tasks = list(TASKS.values())
    per_image, statuses = [], Counter()
    for results in rows.values():
        row = {"requests": 0, "prompt": 0, "cached": 0, "computed": 0, "passes": 0}
        vision = None
        for task in tasks:
            result = results[task.name]
            statuses[result.status] += 1
            if result.prompt_tokens is None:
                continue
            before, length = prompts.layout(task, layout)
            vision = result.prompt_tokens - length + 1  # the server's own count, expanded
            row["requests"] += 1
            row["prompt"] += result.prompt_tokens
            if result.cached_tokens is None or row["cached"] is None:
                row["cached"] = None
                continue
            row["cached"] += result.cached_tokens
            row["computed"] += result.prompt_tokens - result.cached_tokens
            row["passes"] += int(result.cached_tokens < before + vision)
        row["vision"] = vision
        row["bound"] = prompts.bound(tasks, vision) if vision else None
        per_image.append(row)
    return per_image, statuses


def failed_rows(rows: dict[str, dict[str, ExtractionResult]]) -> list[str]:
    """'<image> <task>: <status>: <error>' of each row that is not `ok`, so a table that counts
    failures also says what they were."""
    return [
        f"{image_id} {task}: {result.status}: {result.error or ''}".rstrip(": ")
        for image_id, results in rows.items()
        for task, result in results.items()
        if result.status != "ok"
    ]


def measure_combined(
    prompts: Prompts, answers: dict[str, dict[str, Any]], photos_url: str = "x"
) -> tuple[list[dict[str, Any]], Counter[str]]:
    tasks = list(TASKS.values())
    messages, _, _ = combined_messages(tasks, photos_url)
    ids = prompts.tokens(messages)
    before, length = ids.index(prompts.pad), len(ids)
    per_image, statuses = [], Counter()
    for answer in answers.values():
        usage = answer.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        prompt, cached = usage.get("prompt_tokens"), details.get("cached_tokens")
        finish = (answer.get("choices") or [{}])[0].get("finish_reason")
        statuses[f"finish_{finish}"] += 1
        if prompt is None:
            continue
        vision = prompt - length + 1
        per_image.append(
            {
                "requests": 1,
                "prompt": prompt,
                "cached": cached,
                "computed": prompt - cached if cached is not None else None,
                "passes": int(cached < before + vision) if cached is not None else None,
                "vision": vision,
                "bound": prompts.bound(tasks, vision),
            }
        )
    return per_image, statuses


def run_transformers(photos: list[ImageInput]) -> dict[str, dict[str, Any]]:
    """The in-process backend on the same photos (production `prepare`: decoded at the DCT
    scale whose shorter side is still >= 384 px), old layout vs shared image prefix: images/s,
    prompt tokens computed per image (prompt - reused prefix) and vision-encoder passes per
    image (counted on the model's vision tower)."""
    from core.vlm.tiny_models import TINY_QWEN2_VL_PHOTO_ID, ensure_tiny_qwen2_vl
    from core.vlm.transformers_backend import TransformersBackend
    from resources.model_cache import default_model_cache

    model_dir = ensure_tiny_qwen2_vl(Path(default_model_cache()), photo=True)
    tasks = list(TASKS.values())
    out = {}
    for name, layout, share in (
        ("instruction_first", "instruction_first", False),
        ("image_first_shared_prefix", "image_first", True),
    ):
        backend = TransformersBackend(
            model_dir, model_id=TINY_QWEN2_VL_PHOTO_ID, layout=layout, share_image_prefix=share
        )
        backend._load()
        encoded = [0]

        def count(_module: Any, args: tuple, kwargs: dict, encoded: list[int] = encoded) -> None:
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            encoded[0] += int(grid.shape[0]) if grid is not None else 0

        backend._model.model.visual.register_forward_pre_hook(count, with_kwargs=True)
        backend.extract_tasks([(task, backend.prepare(photos[:1])) for task in tasks])  # warm-up
        encoded[0] = 0
        started = time.perf_counter()
        prepared = backend.prepare(photos)
        outputs = backend.extract_tasks([(task, prepared) for task in tasks])
        seconds = time.perf_counter() - started
        results = [r for per_task in outputs for r in per_task]
        n = len(photos)
        out[name] = {
            "images": n,
            "images_per_s": round(n / seconds, 3),
            "seconds": round(seconds, 1),
            "prompt_tokens_per_image": round(sum(r.prompt_tokens or 0 for r in results) / n, 1),
            "computed_prompt_tokens_per_image": round(
                sum((r.prompt_tokens or 0) - (r.cached_tokens or 0) for r in results) / n, 1
            ),
            "vision_encoder_passes_per_image": round(encoded[0] / n, 2),
            "statuses": dict(Counter(r.status for r in results)),
        }
        print(f"transformers {name}: {out[name]}", flush=True)
        backend.close()
    return out


def start_server(flight: int) -> tuple[Any, str, str]:
    from core.vlm.sglang_launcher import SGLangProcess
    from orchestration.sglang_cpu import photo_vlm_launch

    launch = photo_vlm_launch(
        embedding_cache_mb=0, extra_args=["--max-running-requests", str(flight)]
    )
    key = secrets.token_hex(16)
    process = SGLangProcess(
        launch.settings(), command=launch.command, api_key=key, log=lambda line: None
    )
    print("starting the real SGLang server (CPU engine, tiny Qwen2-VL, photo limits)...")
    process.start()
    print(f"ready after {process.started_s:.0f}s at {process.url}")
    return process, process.url, key


def table(results: dict[str, dict[str, Any]]) -> None:
    def show(value: Any) -> str:
        return "not reported" if value is None else f"{value:g}"

    columns = [
        ("prompt", "prompt_tokens_per_image"),
        ("cached", "cached_tokens_per_image"),
        ("computed", "computed_prompt_tokens_per_image"),
        ("bound", "bound_prompt_tokens_per_image"),
        ("computed/bound", "computed_over_bound"),
        ("encoder passes", "vision_encoder_passes_per_image"),
        ("images/s", "images_per_s"),
    ]
    width = max(len(name) for name in results) + 2
    print("\nper image" + " " * (width - 9) + "".join(f"{c:>16}" for c, _ in columns))
    for name, result in results.items():
        print(f"{name:<{width}}" + "".join(f"{show(result[k]):>16}" for _, k in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--max-in-flight", type=int, default=4)
    parser.add_argument("--url", help="a running server (default: launch the photo model)")
    parser.add_argument("--api-key", default=os.environ.get("SGLANG_API_KEY"))
    parser.add_argument(
        "--layouts",
        default=",".join([*LAYOUTS, "combined"]),
        help="comma-separated subset of: " + ", ".join([*LAYOUTS, "combined"]),
    )
    parser.add_argument(
        "--transformers-images",
        type=int,
        default=4,
        help="photos for the in-process backend's before/after (0: skip)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from core.vlm.tiny_models import ensure_tiny_qwen2_vl
    from orchestration.sglang_cpu import server_env_missing
    from resources.model_cache import default_model_cache

    process = None
    if args.url:
        url, key = args.url.rstrip("/"), args.api_key
    else:
        missing = server_env_missing()
        if missing:
            raise SystemExit(f"the real SGLang server is needed: {missing}")
        process, url, key = start_server(args.max_in_flight)
    prompts = Prompts(ensure_tiny_qwen2_vl(Path(default_model_cache()), photo=True))
    results: dict[str, dict[str, Any]] = {}
    in_process: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            photos = make_photos(Path(tmp), args.images)
            model = SGLangClient(SGLangClientConfig(base_url=url, api_key=key)).served_model
            # Warm-up (first requests compile grammars and allocate): not measured.
            run_client(url, key, photos[:1], "image_first", True, args.max_in_flight)
            wanted = args.layouts.split(",")
            for name, (layout, stagger) in LAYOUTS.items():
                if name not in wanted:
                    continue
                flush(url, key)
                before = server_counters(url, key)
                rows, seconds = run_client(url, key, photos, layout, stagger, args.max_in_flight)
                per_image, statuses = measure_client(prompts, rows, layout)
                results[name] = summarize(
                    name, per_image, seconds, before, server_counters(url, key), statuses
                )
                results[name]["errors"] = failed_rows(rows)
                print(f"{name}: {results[name]}", flush=True)
            if "combined" in wanted:
                flush(url, key)
                before = server_counters(url, key)
                answers, seconds = run_combined(url, key, photos, model, args.max_in_flight)
                per_image, statuses = measure_combined(prompts, answers)
                results["combined"] = summarize(
                    "combined", per_image, seconds, before, server_counters(url, key), statuses
                )
                print(f"combined: {results['combined']}", flush=True)
            if process is not None:  # the server's memory back before loading the model here
                process.stop()
                process = None
            if args.transformers_images:
                in_process = run_transformers(photos[: args.transformers_images])
    finally:
        if process is not None:
            process.stop()
    table(results)
    if in_process:
        print("\ntransformers backend (in-process, CPU):")
        for name, row in in_process.items():
            print(
                f"  {name:<28} images/s {row['images_per_s']:<8g} computed prompt tokens/image "
                f"{row['computed_prompt_tokens_per_image']:<8g} encoder passes/image "
                f"{row['vision_encoder_passes_per_image']:g}"
            )
    for label, name in (("today", TODAY), ("chosen", CHOSEN)):
        if name in results:
            print(f"{label} ({name}): computed / bound = {results[name]['computed_over_bound']}")
    write_json(
        {
            "images": args.images,
            "tasks": list(TASKS),
            "photo_size": list(SIZE),
            "max_in_flight": args.max_in_flight,
            "server": "sglang 0.5.23, CPU engine, tiny random Qwen2-VL (photo limits), "
            "SGLANG_VLM_CACHE_SIZE_MB=0",
            "today": TODAY,
            "chosen": CHOSEN,
            "layouts": results,
            "transformers": in_process,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
