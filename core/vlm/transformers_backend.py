"""In-process LLaVA through transformers: the CPU-capable embedded backend.

Generation is batched and constrained by the task's JSON schema with xgrammar, compiled as
*compact* JSON (`any_whitespace=False`): with whitespace allowed, weak models (and the random
stand-in, in every sample we tried) emit newlines until the token limit. The same loader reads a
real checkpoint (default: a small LLaVA-OneVision) or the locally built stand-in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.ingest.decode import load_rgb
from core.labels.context import check_context
from core.tasks.base import Task
from core.vlm.confidence import Token, field_confidences
from core.vlm.prepare import prepare_images
from core.vlm.prompt import DEFAULT_LAYOUT, Layout, chat_messages
from core.vlm.types import ExtractionResult, ImageInput, PreparedImage, VLMBackend, judge

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"


class ChosenLogprobs:
    """A logits processor, last in the list, that records at each step the log-probability of
    the greedy choice under the processed logits: after the grammar's mask, so renormalised over
    the tokens the grammar allows, as SGLang reports it. O(batch) per step, where keeping
    `output_scores` would hold a vocabulary-sized row per token."""

    def __init__(self) -> None:
        self.steps: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        logits = scores.float()
        self.steps.append(logits.max(dim=-1).values - torch.logsumexp(logits, dim=-1))
        return scores

    def rows(self) -> list[list[float]]:
        """Per batch row, the chosen tokens' logprobs in order (finished rows keep going)."""
        import torch

        if not self.steps:
            return []
        return torch.stack(self.steps, dim=1).cpu().tolist()


def resolve_device(device: str) -> str:
    """`auto`: CUDA when torch sees a GPU, else the CPU; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersBackend(VLMBackend):
    """Loads the model lazily, on the first batch, so building the resource is cheap."""

    def __init__(
        self,
        model_path: str | Path = DEFAULT_MODEL,
        *,
        model_id: str | None = None,
        device: str = "auto",
        batch_size: int = 4,
        max_completion_tokens: int | None = None,
        min_image_side: int = 384,
        threads: int | None = None,
        layout: Layout = DEFAULT_LAYOUT,
        share_image_prefix: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.model_path = str(model_path)
        self._model_id = model_id or self.model_path
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.max_completion_tokens = max_completion_tokens
        self.min_image_side = min_image_side
        self.threads = threads
        self.layout = layout
        # Image first + one prefill of the image for all its tasks (core/vlm/shared_prefix.py);
        # False: one batched generate per task, every task encoding the image again.
        self.share_image_prefix = share_image_prefix and layout == "image_first"
        self.log = log or (lambda _: None)
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None
        self._compiler: Any = None
        self._grammars: dict[str, Any] = {}
        self._fits: set[str] = set()  # task fingerprints whose prompt fits the context

    @property
    def model_id(self) -> str:
        return self._model_id

    def _load(self) -> None:
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is None:
                self._load_now()

    def _load_now(self) -> None:
        import torch
        import xgrammar as xgr
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if self.threads:
            torch.set_num_threads(self.threads)
        started = time.monotonic()
        processor = AutoProcessor.from_pretrained(self.model_path)
        processor.tokenizer.padding_side = "left"  # generation continues at the right edge
        model = AutoModelForImageTextToText.from_pretrained(self.model_path)
        model = model.to(self.device).eval()
        vocab_size = model.config.get_text_config().vocab_size
        stop_ids = model.generation_config.eos_token_id
        info = xgr.TokenizerInfo.from_huggingface(
            processor.tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids
        )
        self._processor, self._model = processor, model
        self._compiler = xgr.GrammarCompiler(info)
        eos = stop_ids if isinstance(stop_ids, list) else [stop_ids]
        self._eos = {int(t) for t in eos if t is not None}
        self._token_bytes: list[bytes] = list(info.decoded_vocab)  # each token's exact bytes
        self.log(
            f"VLM model loaded: {self.model_path} in {time.monotonic() - started:.1f}s "
            f"on {self.device}"
        )

    def close(self) -> None:
        """Release the model: its weights leave the device (CUDA's cached blocks too), so the
        next step that takes the `gpu` pool finds the memory free. A later batch reloads it."""
        with self._load_lock:
            if self._model is None:
                return
            self._model = self._processor = self._compiler = None
            self._grammars = {}
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available() and str(self.device).startswith("cuda"):
            torch.cuda.empty_cache()
        self.log(f"VLM model released: {self.model_path} from {self.device}")

    def grammar(self, schema_json: str) -> Any:
        """Compact-JSON grammar for a schema string, compiled once per string."""
        self._load()
        if schema_json not in self._grammars:
            self._grammars[schema_json] = self._compiler.compile_json_schema(
                schema_json, any_whitespace=False, separators=(",", ":"), strict_mode=True
            )
        return self._grammars[schema_json]

    def compile_grammar(self, kind: str, text: str, *, any_whitespace: bool = False) -> Any:
        """A grammar as a server would compile it: `json_schema` (free whitespace or not) or
        `ebnf` text; compiled once per (kind, text, whitespace). Raises on a bad grammar."""
        self._load()
        key = f"{kind}\0{any_whitespace}\0{text}"
        if key not in self._grammars:
            if kind == "ebnf":
                self._grammars[key] = self._compiler.compile_grammar(text)
            else:
                self._grammars[key] = self._compiler.compile_json_schema(
                    text, any_whitespace=any_whitespace, strict_mode=True
                )
        return self._grammars[key]

    def generate(
        self,
        pictures: list[Any],
        prompt: str,
        schema_json: str | None,
        max_tokens: int,
        *,
        temperature: float = 0.0,
        grammar: Any = None,
    ) -> list[tuple[str, str, int, int, list[Token] | None]]:
        """(text, finish_reason, prompt_tokens, completion_tokens, tokens) per picture, one
        batch; `tokens`: the answer's (bytes, logprob) pairs, None when sampling."""
        import torch
        from xgrammar.contrib.hf import LogitsProcessor

        self._load()
        inputs = self._processor(
            images=pictures, text=[prompt] * len(pictures), return_tensors="pt", padding=True
        ).to(self.device)
        if grammar is None and schema_json:
            grammar = self.grammar(schema_json)
        processors: list[Any] = [LogitsProcessor(grammar)] if grammar is not None else []
        recorder = ChosenLogprobs() if temperature <= 0 else None
        if recorder is not None:
            processors.append(recorder)
        with torch.inference_mode():
            output = self._model.generate(
                **inputs,
                max_new_tokens=max_tokens,
                do_sample=temperature > 0,
                **({"temperature": temperature, "top_k": 0} if temperature > 0 else {}),
                logits_processor=processors,
                pad_token_id=self._processor.tokenizer.pad_token_id,
            )
        prompt_len = inputs["input_ids"].shape[1]
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        logprobs = recorder.rows() if recorder is not None else None
        results = []
        for index, (row, length) in enumerate(
            zip(output[:, prompt_len:].tolist(), lengths, strict=True)
        ):
            text, finish, completion_tokens = self._finish(row)
            tokens = self._answer_tokens(row, logprobs[index]) if logprobs is not None else None
            results.append((text, finish, int(length), completion_tokens, tokens))
        return results

    def _answer_tokens(self, row: list[int], logprobs: list[float]) -> list[Token]:
        """The answer's tokens, up to and including the first stop token, as (bytes, logprob)
        pairs: what SGLang returns in `logprobs.content`."""
        stop_at = next((i for i, t in enumerate(row) if t in self._eos), len(row) - 1)
        return [
            (self._token_bytes[t], lp) for t, lp in zip(row[: stop_at + 1], logprobs, strict=False)
        ]

    def _confidence(
        self, status: str, text: str, row: list[int], logprobs: list[float] | None
    ) -> dict[str, float | None] | None:
        if status != "ok":
            return None
        tokens = self._answer_tokens(row, logprobs) if logprobs is not None else None
        return field_confidences(text, tokens)

    def _finish(self, row: list[int]) -> tuple[str, str, int]:
        """(text, finish_reason, completion tokens) of generated ids, cut at the first stop."""
        stop_at = next((i for i, t in enumerate(row) if t in self._eos), None)
        tokens = row if stop_at is None else row[:stop_at]
        text = self._processor.tokenizer.decode(tokens, skip_special_tokens=True)
        return text, "length" if stop_at is None else "stop", len(tokens) + (stop_at is not None)

    def prompt(self, task: Task) -> str:
        self._load()
        return self._processor.apply_chat_template(
            chat_messages(task, layout=self.layout), add_generation_prompt=True, tokenize=False
        )

    def _check_context(self, task: Task, prompt: str) -> None:
        """The rendered prompt, the image's tokens and the answer budget must fit the model's
        `max_position_embeddings` (`core.labels.context`); checked once per task version."""
        if task.fingerprint in self._fits:
            return
        config = self._model.config
        context = getattr(config.get_text_config(), "max_position_embeddings", None)
        if context:
            tokenizer = self._processor.tokenizer
            image_processor = getattr(self._processor, "image_processor", None)
            image_tokens = getattr(config, "image_seq_length", None) or (
                getattr(image_processor, "max_pixels", 0) or 0
            ) // (28 * 28)  # Qwen2-VL: one token per merged 28 px patch, at most max_pixels
            check_context(
                [task],
                context_length=int(context),
                prompt_tokens=lambda _: len(tokenizer(prompt, add_special_tokens=False).input_ids),
                image_tokens=int(image_tokens),
                max_completion_tokens=self.max_completion_tokens,
                model=self.model_id,
            )
        self._fits.add(task.fingerprint)

    def extract_tasks(
        self, jobs: Sequence[tuple[Task, Sequence[PreparedImage]]]
    ) -> list[list[ExtractionResult]]:
        """Image-major: each batch of images encoded and prefilled once for all its tasks."""
        if not self.share_image_prefix:
            return super().extract_tasks(jobs)
        self._load()
        # Images asked the same tasks go together, in batches of `batch_size`.
        places: dict[str, list[tuple[int, int]]] = {}
        for j, (_, prepared) in enumerate(jobs):
            for i, item in enumerate(prepared):
                places.setdefault(item.image.image_id, []).append((j, i))
        groups: dict[tuple[int, ...], list[str]] = {}
        for image_id, where in places.items():
            groups.setdefault(tuple(j for j, _ in where), []).append(image_id)
        out: list[list[Any]] = [[None] * len(prepared) for _, prepared in jobs]
        with self._lock:  # one generate at a time: the model is not thread-safe
            for task_ids, image_ids in groups.items():
                tasks = [jobs[j][0] for j in task_ids]
                for start in range(0, len(image_ids), self.batch_size):
                    chunk = image_ids[start : start + self.batch_size]
                    items = [jobs[places[i][0][0]][1][places[i][0][1]] for i in chunk]
                    for image_id, results in zip(
                        chunk, self._extract_shared(items, tasks), strict=True
                    ):
                        for (j, i), result in zip(places[image_id], results, strict=True):
                            out[j][i] = result
        return out

    def _extract_shared(
        self, items: list[PreparedImage], tasks: list[Task]
    ) -> list[list[ExtractionResult]]:
        """Per image, one result per task, from one prefill of the images' shared prefix. An
        unreadable image fails alone; a failing batch is retried image by image."""
        import torch
        from xgrammar.contrib.hf import LogitsProcessor

        from core.vlm.shared_prefix import generate_shared

        started = time.monotonic()
        readable = [item for item in items if item.error is None and item.payload is not None]
        answers: dict[str, list[ExtractionResult]] = {}
        for item in items:
            if item not in readable:
                error = item.error or "cannot read image: not prepared"
                answers[item.image.image_id] = [
                    self._failure(item.image, error, started) for _ in tasks
                ]
        if readable:
            for task in tasks:  # a spec error before any image is sent
                self._check_context(task, self.prompt(task))
            budgets = [self.max_completion_tokens or t.max_completion_tokens for t in tasks]
            pictures = [item.payload for item in readable]
            try:
                encoded = [
                    self._processor(
                        images=pictures,
                        text=[self.prompt(t)] * len(pictures),
                        return_tensors="pt",
                        padding=True,
                    )
                    .to(self.device)
                    .data
                    for t in tasks
                ]
                recorders = [ChosenLogprobs() for _ in tasks]
                outputs, _, shared = generate_shared(
                    self._model,
                    encoded,
                    max_new_tokens=budgets,
                    logits_processors=[
                        [LogitsProcessor(self.grammar(t.schema_json)), recorder]
                        for t, recorder in zip(tasks, recorders, strict=True)
                    ],
                    pad_token_id=self._processor.tokenizer.pad_token_id,
                )
                logprobs = [recorder.rows() for recorder in recorders]
            except (RuntimeError, ValueError, torch.cuda.OutOfMemoryError) as error:
                if len(readable) == 1:
                    message = f"{type(error).__name__}: {error}"
                    failure = [self._failure(readable[0].image, message, started) for _ in tasks]
                    answers[readable[0].image.image_id] = failure
                else:  # isolate the bad one
                    for item in readable:
                        answers[item.image.image_id] = self._extract_shared([item], tasks)[0]
                return [answers[item.image.image_id] for item in items]
            latency_ms = (time.monotonic() - started) * 1000 / len(readable)
            for row, item in enumerate(readable):
                results = []
                for t, (task, budget) in enumerate(zip(tasks, budgets, strict=True)):
                    text, finish, completion_tokens = self._finish(outputs[t][row])
                    verdict = judge(task, text, finish, budget)
                    confidence = self._confidence(
                        verdict.status, text, outputs[t][row], logprobs[t][row]
                    )
                    mask = encoded[t]["attention_mask"][row]
                    results.append(
                        ExtractionResult(
                            image_id=item.image.image_id,
                            status=verdict.status,
                            raw_text=text,
                            parsed=verdict.parsed,
                            error=verdict.error,
                            latency_ms=latency_ms,
                            prompt_tokens=int(mask.sum()),
                            completion_tokens=completion_tokens,
                            # the first task prefilled the shared prefix; the others reused it
                            cached_tokens=int(mask[:shared].sum()) if t else 0,
                            attempts=1,
                            confidence=confidence,
                        )
                    )
                answers[item.image.image_id] = results
        return [answers[item.image.image_id] for item in items]

    def prepare(self, images: Sequence[ImageInput]) -> list[PreparedImage]:
        """Each picture decoded once per run (at the DCT scale the processor needs), for all tasks."""
        return prepare_images(images, lambda data: load_rgb(data, min_side=self.min_image_side))

    def extract(self, images: Sequence[ImageInput], task: Task) -> list[ExtractionResult]:
        return self.extract_prepared(self.prepare(images), task)

    def extract_prepared(
        self, prepared: Sequence[PreparedImage], task: Task
    ) -> list[ExtractionResult]:
        max_tokens = self.max_completion_tokens or task.max_completion_tokens
        results: list[ExtractionResult] = []
        with self._lock:  # one generate at a time: the model is not thread-safe
            prompt = self.prompt(task)
            self._check_context(task, prompt)  # a spec error before any image is sent
            for start in range(0, len(prepared), self.batch_size):
                chunk = list(prepared[start : start + self.batch_size])
                results += self._extract_chunk(chunk, task, prompt, max_tokens)
        return results

    def _extract_chunk(
        self, chunk: list[PreparedImage], task: Task, prompt: str, max_tokens: int
    ) -> list[ExtractionResult]:
        started = time.monotonic()
        pictures: list[Any] = []
        failed: dict[int, str] = {}
        for i, item in enumerate(chunk):
            if item.error is not None or item.payload is None:  # fails alone, not its batch
                failed[i] = item.error or "cannot read image: not prepared"
            else:
                pictures.append(item.payload)
        try:
            outputs = iter(
                self.generate(pictures, prompt, task.schema_json, max_tokens) if pictures else []
            )
        except Exception as error:
            if len(chunk) == 1:
                return [self._failure(chunk[0].image, f"{type(error).__name__}: {error}", started)]
            # Isolate the bad one: retry each image alone.
            return [
                r for item in chunk for r in self._extract_chunk([item], task, prompt, max_tokens)
            ]
        latency_ms = (time.monotonic() - started) * 1000 / max(1, len(pictures))
        results = []
        for i, item in enumerate(chunk):
            image = item.image
            if i in failed:
                results.append(self._failure(image, failed[i], started))
                continue
            text, finish, prompt_tokens, completion_tokens, tokens = next(outputs)
            verdict = judge(task, text, finish, max_tokens)
            results.append(
                ExtractionResult(
                    image_id=image.image_id,
                    status=verdict.status,
                    raw_text=text,
                    parsed=verdict.parsed,
                    error=verdict.error,
                    latency_ms=latency_ms,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    cached_tokens=0,
                    attempts=1,
                    confidence=field_confidences(text, tokens) if verdict.status == "ok" else None,
                )
            )
        return results

    @staticmethod
    def _failure(image: ImageInput, error: str, started: float) -> ExtractionResult:
        return ExtractionResult(
            image_id=image.image_id,
            status="error",
            error=error,
            latency_ms=(time.monotonic() - started) * 1000,
            attempts=1,
        )
