"""The real SGLang server on this host's CPU: where it is installed and how to launch it.

`make sglang-env` installs released sglang 0.5.23 into `.venv-sglang` (its pins differ from the
project's); the real-server tests and `make sglang-demo` launch it from there with the CPU engine
on the tiny random-weight Qwen2-VL that `core.vlm.tiny_models` builds under data/models/.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from core.vlm.tiny_models import CONTEXT_LENGTH, TINY_QWEN2_VL_ID, ensure_tiny_qwen2_vl
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
