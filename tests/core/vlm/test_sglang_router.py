"""The fleet (N servers + sglang-router) without SGLang: fake servers, real processes.

The real router over real servers: tests/integration/test_sglang_router.py.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from core.vlm.sglang_launcher import LaunchSettings, SGLangLaunchError
from core.vlm.sglang_router import RouterSettings, SGLangFleet, check_router_args, plain
from resources.sglang_server import SGLangLaunch

FAKE = [sys.executable, str(Path(__file__).parents[3] / "doubles" / "sglang_launch_server.py")]


def _group_gone(group: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_each_server_gets_its_own_port_and_the_router_names_them_all_on_loopback():
    fleet = SGLangFleet(LaunchSettings(model_path="m"), 3, command=FAKE)
    ports = [server.port for server in fleet.servers]
    assert len(set(ports)) == 3
    argv = fleet.router.argv()
    workers = argv[argv.index("--worker-urls") + 1 : argv.index("--worker-urls") + 4]
    assert workers == [f"http://127.0.0.1:{port}" for port in ports]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--prometheus-host") + 1] == "127.0.0.1"  # its default: 0.0.0.0
    assert argv[argv.index("--policy") + 1] == "cache_aware"


def test_a_fixed_port_with_several_servers_is_refused():
    with pytest.raises(ValueError, match="port 0"):
        SGLangFleet(LaunchSettings(model_path="m", port=30000), 2, command=FAKE)


@pytest.mark.parametrize(
    "extra", [["--host", "0.0.0.0"], ["--port=1"], ["--worker-urls", "http://x"], ["--api-key"]]
)
def test_router_flags_the_fleet_owns_are_refused(extra):
    with pytest.raises(ValueError, match="may not set"):
        check_router_args(extra)
    with pytest.raises(ValueError, match="may not set"):
        RouterSettings(extra_args=extra)


def test_an_unknown_router_policy_is_a_config_error():
    with pytest.raises(ValueError, match="round_robin"):
        SGLangLaunch(model_path="m", data_parallel=2, router_policy="fastest")


def test_a_router_that_cannot_start_stops_every_server_it_was_for():
    # The fake servers become ready; the router exits at once: the start fails with its
    # code and no server is left.
    lines: list[str] = []
    fleet = SGLangFleet(LaunchSettings(model_path="m"), 2, command=FAKE, log=lines.append)
    fleet.router.command = [sys.executable, "-c", "import sys; sys.exit(1)"]
    with pytest.raises(SGLangLaunchError, match=r"sglang-router exited with code 1"):
        fleet.start()
    groups = [server.process.pid for server in fleet.servers if server.process is not None]
    assert len(groups) == 2
    assert all(_group_gone(group) for group in groups)
    assert any("[0] SGLang ready" in line for line in lines)
    assert any("[1] SGLang ready" in line for line in lines)


def test_router_log_lines_reach_the_log_without_terminal_colours():
    line = (
        "\x1b[2m2026-12-02 00:03:17\x1b[0m \x1b[33m WARN\x1b[0m \x1b[2msmg::workflow\x1b[0m: failed"
    )
    assert plain(line) == "2026-12-02 00:03:17  WARN smg::workflow: failed"
