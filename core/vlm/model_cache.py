"""What the locally built stand-in VLMs share: their cache folder, chat layout, tokenizer training
and an atomic save, so each stand-in module holds only its own architecture and vocabulary."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "STANDIN.json"  # written last: a folder without it is an incomplete build


def chat_template(image_placeholder: str) -> str:
    """ChatML with image parts rendered as `image_placeholder` where they stand in the content."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] in ('image', 'image_url') %}" + image_placeholder + "\n"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}\n{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def train_bpe(corpus: list[str], vocab_size: int, special_tokens: list[str]) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` trained locally on `corpus` (nothing downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def save_atomically(target: Path, write: Callable[[Path], None], marker: dict[str, Any]) -> Path:
    """Build into a staging folder beside `target`, then rename it into place: a crash or a
    concurrent build never leaves a half-written checkpoint under the final name."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(staging)
        (staging / MARKER).write_text(json.dumps(marker))
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:
            if not (target / MARKER).exists():  # lost a race to a complete build: fine
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def spec_corpus() -> tuple[list[str], list[str], list[str]]:
    """(instructions, schemas, choice values) of the bundled spec's tasks, the text the stand-in
    tokenizers are trained on. Always the bundled spec, whatever IMAGE_PIPELINE_LABELS says: the
    checkpoint (and its model_id) must not depend on the spec in use. Another spec's prompts
    still tokenize (byte-level BPE: every byte is a token), only into more tokens; the context
    check (`core.labels.context`) says so before any image is sent when they would not fit."""
    from core.labels.derive import build_tasks
    from core.labels.loader import default_spec
    from core.labels.spec import ChoiceField

    spec = default_spec()
    tasks = build_tasks(spec).values()
    words = [
        value
        for task in spec.tasks
        for field in task.fields
        if isinstance(field, ChoiceField)
        for value in field.values
    ]
    return [t.instruction for t in tasks], [t.schema_json for t in tasks], words
