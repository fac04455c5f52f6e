"""The launch path of SGLangServer, with a fake `sglang.launch_server` executable."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from core.vlm.sglang_launcher import LaunchSettings, SGLangLaunchError, SGLangProcess
from orchestration.settings import REPO_ROOT
from resources.sglang_server import SGLangLaunch, SGLangServer

FAKE = [sys.executable, str(REPO_ROOT / "doubles" / "sglang_launch_server.py")]
SETTINGS = LaunchSettings(
    model_path="lmms-lab/llava-onevision-qwen2-7b-ov", chat_template="chatml-llava"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped by its parent yet) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(*pids: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _pids(pidfile: Path) -> list[int]:
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return [int(p) for p in pidfile.read_text().split()]


@pytest.fixture
def pidfile(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "pids"
    monkeypatch.setenv("FAKE_SGLANG_PIDFILE", str(path))
    return path


def test_starts_bound_to_localhost_waits_for_ready_and_stops_the_process_group(pidfile):
    lines: list[str] = []
    process = SGLangProcess(SETTINGS, command=FAKE, api_key="s3cret-key", log=lines.append)
    process.start()
    try:
        assert httpx.get(f"{process.url}/ready").status_code == 200
        argv = process.argv()
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
        assert argv[argv.index("--chat-template") + 1] == "chatml-llava"
        assert "--enable-metrics" in argv and "--constrained-json-disable-any-whitespace" in argv
        server_pid, child_pid = _pids(pidfile)
        for pid in (server_pid, child_pid):  # not in `ps`: the key went through a 0600 file
            assert b"s3cret-key" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert "--api-key" not in argv
    finally:
        process.stop()
    assert _wait_gone(server_pid, child_pid)
    text = "\n".join(lines)
    assert "fired up" in text and "s3cret-key" not in text and "***" in text
    assert "api_key='***'" in text  # the fake echoes the key it read, as SGLang logs it
    assert not Path(argv[argv.index("--config") + 1]).exists()  # deleted once it was read


def test_a_server_that_dies_during_startup_is_reported_with_its_log(monkeypatch, pidfile):
    monkeypatch.setenv("FAKE_SGLANG_EXIT", "3")
    process = SGLangProcess(SETTINGS, command=FAKE, log=lambda _: None)
    with pytest.raises(SGLangLaunchError, match=r"exited with code 3(.|\n)*CUDA out of memory"):
        process.start()
    server_pid, child_pid = _pids(pidfile)
    assert _wait_gone(server_pid, child_pid)  # its orphaned child was killed too


def test_not_ready_in_time_kills_the_group_even_if_it_ignores_sigterm(monkeypatch, pidfile):
    monkeypatch.setenv("FAKE_SGLANG_READY_AFTER_S", "600")
    monkeypatch.setenv("FAKE_SGLANG_IGNORE_TERM", "1")
    process = SGLangProcess(
        SETTINGS, command=FAKE, ready_timeout_s=1.5, stop_grace_s=0.5, log=lambda _: None
    )
    with pytest.raises(SGLangLaunchError, match=r"not ready after 2s \(/ready answered 503\)"):
        process.start()
    assert _wait_gone(*_pids(pidfile))


def test_missing_executable_names_the_cause():
    process = SGLangProcess(SETTINGS, command=["/nonexistent/python"], log=lambda _: None)
    with pytest.raises(SGLangLaunchError, match="is sglang installed"):
        process.start()


def test_the_resource_launches_inside_serving_and_stops_when_the_block_ends(pidfile):
    seen: dict[str, object] = {}

    @dg.asset
    def probe(context, sglang: SGLangServer) -> None:
        assert not pidfile.exists()  # Dagster's resource set-up started nothing
        with sglang.serving(log=context.log.info) as url:
            seen["ready"] = httpx.get(f"{sglang.base_url}/ready").status_code
            seen["url"] = url
        assert _wait_gone(*_pids(pidfile))  # stopped before the step ends

    resource = SGLangServer(
        launch=SGLangLaunch(
            model_path="m", chat_template="chatml-llava", command=FAKE, ready_timeout_s=30
        ),
        api_key="s3cret-key",
    )
    result = dg.materialize([probe], resources={"sglang": resource})
    assert result.success and seen["ready"] == 200
    assert str(seen["url"]).startswith("http://127.0.0.1:")
    assert _wait_gone(*_pids(pidfile))
    logs = "\n".join(str(event.message) for event in result.all_events if event.message is not None)
    assert "s3cret-key" not in logs


def test_the_resource_stops_the_server_when_start_up_fails(monkeypatch, pidfile):
    monkeypatch.setenv("FAKE_SGLANG_READY_AFTER_S", "600")

    @dg.asset
    def probe(sglang: SGLangServer) -> None:
        with sglang.serving():
            raise AssertionError("never runs")

    resource = SGLangServer(
        launch=SGLangLaunch(
            model_path="m", chat_template="chatml-llava", command=FAKE, ready_timeout_s=1
        )
    )
    result = dg.materialize([probe], resources={"sglang": resource}, raise_on_error=False)
    assert not result.success
    assert _wait_gone(*_pids(pidfile))


@pytest.mark.parametrize(
    "extra",
    [
        ["--host", "0.0.0.0"],
        ["--host=0.0.0.0"],
        ["--port", "8000"],
        ["--port=8000"],
        ["--api-key", "leaked"],
        ["--api-key=leaked"],
    ],
)
def test_extra_args_cannot_override_the_binding_or_put_a_key_on_the_command_line(extra):
    with pytest.raises(ValueError, match="extra_args"):
        LaunchSettings(model_path="m", chat_template="chatml-llava", extra_args=extra)
    with pytest.raises(ValueError, match="extra_args"):
        SGLangLaunch(model_path="m", chat_template="chatml-llava", extra_args=extra)


def test_extra_args_that_do_not_touch_the_binding_are_passed_on():
    settings = LaunchSettings(
        model_path="m", chat_template="chatml-llava", extra_args=["--max-running-requests", "4"]
    )
    args = SGLangProcess(settings, command=FAKE).argv()
    assert args[-2:] == ["--max-running-requests", "4"]
    assert args[args.index("--host") + 1] == "127.0.0.1"
