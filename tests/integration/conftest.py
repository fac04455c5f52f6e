"""The released SGLang server (CPU engine, tiny random Qwen2-VL) for the real-server tests.

One server per module, launched by the production launcher (`SGLangProcess`) from `.venv-sglang`
(`make sglang-env`; `make test` builds it first). Skipped, with the reason printed by `-ra`, only
where the platform cannot run the CPU engine; a missing venv is a failure under `make test`
(IMAGE_PIPELINE_REQUIRE_SGLANG=1) and a skip in a bare `pytest` run.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from core.vlm.sglang_launcher import SGLangProcess
from orchestration.sglang_cpu import platform_unsupported, server_env_missing, tiny_vlm_launch
from tests.conftest import SAMPLES

READY_TIMEOUT_S = 1500.0  # a cold start on 2 busy cores took 6 minutes


def require_real_sglang() -> None:
    reason = platform_unsupported()
    if reason:
        pytest.skip(f"real SGLang server: {reason}")
    missing = server_env_missing()
    if missing:
        if os.environ.get("IMAGE_PIPELINE_REQUIRE_SGLANG") == "1":
            pytest.fail(f"real SGLang server: {missing}")
        pytest.skip(f"real SGLang server: {missing}")


@dataclass
class RealServer:
    process: SGLangProcess
    api_key: str
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def group(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def log_text(self) -> str:
        return "\n".join(self.lines)


def group_members(group: int) -> list[int]:
    """Live (non-zombie) pids of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(") ", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(entry.name))
    return members


def wait_group_gone(group: int, timeout_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = group_members(group)
        if not left:
            return []
        time.sleep(0.2)
    return group_members(group)


def start_real_server(*, extra_args: list[str], compact_json: bool) -> RealServer:
    require_real_sglang()
    launch = tiny_vlm_launch(extra_args=extra_args, compact_json=compact_json)
    server = RealServer(process=None, api_key=secrets.token_hex(16))  # type: ignore[arg-type]
    server.process = SGLangProcess(
        launch.settings(),
        command=launch.command,
        api_key=server.api_key,
        ready_timeout_s=READY_TIMEOUT_S,
        log=server.lines.append,
    )
    server.process.start()
    print(f"\nreal SGLang server ready at {server.url} after {server.process.started_s:.0f}s")
    return server


@pytest.fixture(scope="module")
def real_server() -> Iterator[RealServer]:
    """API key, 1 running + 2 queued requests (so 8 in flight meet real 503s), metrics on, and
    started WITHOUT --constrained-json-disable-any-whitespace (as a server we did not launch)."""
    server = start_real_server(
        extra_args=["--max-running-requests", "1", "--max-queued-requests", "2"],
        compact_json=False,
    )
    try:
        yield server
    finally:
        server.process.stop()
        left = wait_group_gone(server.group)
        assert not left, f"SGLang processes left in group {server.group}: {left}"


def make_drop(folder: Path, count: int = 21) -> Path:
    """The 7 samples plus re-encoded copies (other bytes, so other images): `count` images."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(SAMPLES.glob("*.jpg"))
    for index in range(count):
        source = sources[index % len(sources)]
        variant = index // len(sources)
        picture = ImageOps.exif_transpose(Image.open(source)).convert("RGB")
        if variant:
            side = max(64, max(picture.size) // (variant + 1))
            picture.thumbnail((side, side))
        picture.save(folder / f"{source.stem}-{variant}.jpg", quality=90 - 7 * variant)
    return folder
