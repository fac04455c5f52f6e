"""The real SGLang server on this host's CPU: where it is installed and how to launch it.

`make sglang-env` installs released sglang 0.5.23 into `.venv-sglang` (its pins differ from the
project's); the real-server tests and `make sglang-demo` launch it from there with the CPU engine
on the tiny random-weight Qwen2-VL that `core.vlm.tiny_models` builds under data/models/.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from core.vlm.tiny_models import (
    CONTEXT_LENGTH,
    PHOTO_CONTEXT_LENGTH,
    PHOTO_MAX_PIXELS,
    TINY_QWEN2_VL_ID,
    TINY_QWEN2_VL_PHOTO_ID,
    ensure_tiny_qwen2_vl,
)
from orchestration.settings import REPO_ROOT
from resources.model_cache import default_model_cache
from resources.sglang_server import SGLangLaunch

SGLANG_VENV = REPO_ROOT / ".venv-sglang"
SGLANG_PYTHON = SGLANG_VENV / "bin" / "python"
SGLANG_STAMP = SGLANG_VENV / ".installed"
# SGLang resizes Qwen-VL images itself (SGLANG_IMAGE_MAX_PIXELS, default 16384 * 28 * 28 px, i.e.
# up to 16384 image tokens); 16 * 28 * 28 keeps the tiny model's images at <= 16 tokens.
TINY_IMAGE_MAX_PIXELS = 16 * 28 * 28
KV_CACHE_TOKENS = 16384  # --max-total-tokens: the KV pool, in RAM on the CPU engine


def platform_unsupported() -> str | None:
    """Why this host cannot run SGLang's CPU engine, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"SGLang's CPU engine needs Linux, not {sys.platform}"
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "aarch64", "arm64"):
        return f"SGLang's CPU engine needs x86-64 or arm64, not {machine}"
    return None


def server_env_missing() -> str | None:
    """Why the server venv is not usable yet, or None."""
    if not SGLANG_STAMP.exists():
        return f"{SGLANG_VENV.name} is not installed: run `make sglang-env`"
    return None


def tiny_vlm_launch(
    *, extra_args: list[str] | None = None, compact_json: bool = True, **fields: object
) -> SGLangLaunch:
    """A CPU-engine launch of the tiny Qwen2-VL (built on first use), served as its stand-in id.

    The model's own chat template is used (no --chat-template): the client is family-neutral.
    """
    model = ensure_tiny_qwen2_vl(Path(default_model_cache()))
    return SGLangLaunch.cpu_engine(
        model,
        SGLANG_PYTHON,
        served_model_name=TINY_QWEN2_VL_ID,
        context_length=CONTEXT_LENGTH,
        compact_json=compact_json,
        extra_args=["--max-total-tokens", str(KV_CACHE_TOKENS), *(extra_args or [])],
        env={"SGLANG_IMAGE_MAX_PIXELS": str(TINY_IMAGE_MAX_PIXELS)},
        **fields,
    )


def photo_vlm_launch(
    *,
    extra_args: list[str] | None = None,
    compact_json: bool = True,
    embedding_cache_mb: int | None = None,
    **fields: object,
) -> SGLangLaunch:
    """The tiny Qwen2-VL with production pixel limits (`photo` variant): a 1536x1152 photo is
    2,255 vision tokens, in a 4,096-token context. `embedding_cache_mb` sets the server's
    vision-embedding cache (`SGLANG_VLM_CACHE_SIZE_MB`, SGLang's default 100): 0 makes the
    vision encoder run for every request whose image is not in the prefix cache, as on a GPU
    server whose cache holds fewer images than it has requests in flight.

    SGLang 0.5.23 loads every `qwen2_vl` image processor with `longest_edge` 1,003,520 px
    (`srt/utils/hf_transformers/processor.py`): at most 1,280 vision tokens, whatever the
    checkpoint says (a 1536x1152 photo: 1,230). `--mm-process-config` passes the checkpoint's
    own limit with every image, as a production launch that wants Qwen2-VL's resolution must."""
    model = ensure_tiny_qwen2_vl(Path(default_model_cache()), photo=True)
    size = {"shortest_edge": 4 * 28 * 28, "longest_edge": PHOTO_MAX_PIXELS}
    mm_config = json.dumps({"image": {"size": size}}, separators=(",", ":"))
    env = {"SGLANG_IMAGE_MAX_PIXELS": str(PHOTO_MAX_PIXELS)}
    if embedding_cache_mb is not None:
        env["SGLANG_VLM_CACHE_SIZE_MB"] = str(embedding_cache_mb)
    return SGLangLaunch.cpu_engine(
        model,
        SGLANG_PYTHON,
        served_model_name=TINY_QWEN2_VL_PHOTO_ID,
        context_length=PHOTO_CONTEXT_LENGTH,
        compact_json=compact_json,
        extra_args=[
            "--max-total-tokens",
            str(4 * KV_CACHE_TOKENS),
            "--mm-process-config",
            mm_config,
            # One new sequence per prefill batch: the CPU engine's vision encoder over several
            # 2,255-token images at once took 15.8 GB and was OOM-killed on this 23 GB host.
            "--prefill-max-requests",
            "1",
            *(extra_args or []),
        ],
        env=env,
        **fields,
    )
