"""Data parallel on one host: N SGLang servers behind SGLang's own router (`sglang-router`).

The router is `python -m sglang_router.launch_router` from PyPI `sglang-router==0.3.2` (the
router SGLang 0.5.23's own test fixtures launch; its Rust core is the `smg` gateway). It binds
127.0.0.1 on a free port, its Prometheus exporter too, and is ready when `GET /readiness` says
every worker is healthy. It forwards the client's `Authorization` header to the workers and
checks no key itself, so it is given none: the workers (launched with the key through
`--config`, see `sglang_launcher`) answer 401 through it.

`SGLangFleet` starts the servers at once (each `SGLangProcess`, its own process group), then the
router (its own group); `stop()` stops the router, then every server, also when start-up fails.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal

import httpx
from pydantic import BaseModel, Field, field_validator

from core.vlm.sglang_launcher import (
    HOST,
    LaunchSettings,
    SGLangLaunchError,
    SGLangProcess,
    free_port,
)

ROUTER_MODULE = "sglang_router.launch_router"
# The router's own flags the fleet sets: the loopback binding (router and exporter; the
# router's defaults are 0.0.0.0:30000 and 0.0.0.0:29000), its workers, and keys.
RESERVED_ROUTER_FLAGS = (
    "--host",
    "--port",
    "--worker-urls",
    "--prometheus-host",
    "--prometheus-port",
    "--api-key",
    "--control-plane-api-keys",
)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(line: str) -> str:
    """The router's log line without its terminal colours (it ignores NO_COLOR)."""
    return _ANSI.sub("", line)


def check_router_args(extra_args: list[str]) -> list[str]:
    """Refuse router flags that would rebind it, rewire its workers or put a key on its argv."""
    for arg in extra_args:
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or len(name) < 4:
            continue
        clash = next((flag for flag in RESERVED_ROUTER_FLAGS if flag.startswith(name)), None)
        if clash:
            raise ValueError(
                f"router extra_args may not set {clash} ({arg!r}): the fleet binds {HOST}, "
                "names the workers itself, and the router needs no key (it forwards the client's)"
            )
    return extra_args


class RouterSettings(BaseModel):
    policy: Literal["cache_aware", "round_robin", "power_of_two", "random"] = Field(
        default="cache_aware",
        description="cache_aware (the router's default) keeps shared prefixes on one worker; "
        "round_robin spreads evenly.",
    )
    log_level: Literal["debug", "info", "warn", "error"] = Field(
        default="warn", description="info logs two lines per request."
    )
    extra_args: list[str] = Field(default_factory=list)

    _check_extra = field_validator("extra_args")(check_router_args)


class RouterProcess(SGLangProcess):
    """`python -m sglang_router.launch_router` over given workers; ready when all are healthy."""

    name = "sglang-router"

    def __init__(
        self,
        worker_urls: Sequence[str],
        settings: RouterSettings,
        *,
        python: str = sys.executable,
        ready_timeout_s: float = 120.0,
        stop_grace_s: float = 10.0,
        log: Callable[[str], None] = print,
    ) -> None:
        super().__init__(
            LaunchSettings(model_path="-"),  # unused: a router serves no model itself
            command=[python, "-m", ROUTER_MODULE],
            ready_timeout_s=ready_timeout_s,
            stop_grace_s=stop_grace_s,
            log=log,
        )
        self.worker_urls = list(worker_urls)
        self.router_settings = settings
        self.prometheus_port = free_port()

    def argv(self) -> list[str]:
        settings = self.router_settings
        return [
            *self.command,
            *("--host", HOST, "--port", str(self.port)),
            *("--worker-urls", *self.worker_urls),
            *("--policy", settings.policy, "--log-level", settings.log_level),
            *("--prometheus-host", HOST, "--prometheus-port", str(self.prometheus_port)),
            # The workers are ready when the router starts: check at once, not after 30 s; a
            # dead worker is marked unhealthy after 3 checks (10 s apart, not the default 60 s).
            *("--worker-startup-check-interval", "1", "--health-check-interval-secs", "10"),
            *settings.extra_args,
        ]

    def _mask(self, line: str) -> str:
        return plain(super()._mask(line))

    def ready(self) -> tuple[bool, str]:
        """`/readiness` 200 with every worker healthy (it is 200 from the first healthy one)."""
        response = httpx.get(f"{self.url}/readiness", timeout=5.0)
        if response.status_code != 200:
            return False, f"/readiness answered {response.status_code}"
        body = response.json()
        healthy, total = body.get("healthy_workers"), body.get("total_workers")
        if healthy == total == len(self.worker_urls):
            return True, ""
        return False, f"/readiness: {healthy} of {len(self.worker_urls)} workers healthy"


class SGLangFleet:
    """`data_parallel` servers of one model, each on its own port, behind one router."""

    def __init__(
        self,
        settings: LaunchSettings,
        data_parallel: int,
        *,
        command: Sequence[str] = (sys.executable, "-m", "sglang.launch_server"),
        router: RouterSettings | None = None,
        api_key: str | None = None,
        ready_timeout_s: float = 1800.0,
        stop_grace_s: float = 30.0,
        log: Callable[[str], None] = print,
    ) -> None:
        if data_parallel < 1:
            raise ValueError("data_parallel must be at least 1")
        if settings.port and data_parallel > 1:
            raise ValueError("data_parallel > 1 needs port 0: each server takes a free port")
        self.log = log
        ports: list[int] = []
        while len(ports) < data_parallel:  # free_port() twice can return the same port
            port = settings.port or free_port()
            if port not in ports:
                ports.append(port)
        self.servers = [
            SGLangProcess(
                settings.model_copy(update={"port": port}),
                command=command,
                api_key=api_key,
                ready_timeout_s=ready_timeout_s,
                stop_grace_s=stop_grace_s,
                log=lambda line, index=index: log(f"[{index}] {line}"),
            )
            for index, port in enumerate(ports)
        ]
        self.router = RouterProcess(
            [server.url for server in self.servers],
            router or RouterSettings(),
            python=command[0],
            stop_grace_s=min(stop_grace_s, 10.0),
            log=log,
        )
        self.started_s: float | None = None  # spawn of the first server to the router ready
        self.router_started_s: float | None = None

    @property
    def url(self) -> str:
        return self.router.url

    @property
    def worker_urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def start(self) -> None:
        """All servers at once, then the router; on any failure everything started is stopped."""
        spawned = time.monotonic()
        errors: list[BaseException] = []

        def start_one(server: SGLangProcess) -> None:
            try:
                server.start()
            except BaseException as error:  # reported below, after every thread ended
                errors.append(error)

        threads = [threading.Thread(target=start_one, args=(s,)) for s in self.servers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            if errors:
                raise errors[0]
            self.router.start()
        except BaseException:
            self.stop()
            raise
        self.router_started_s = self.router.started_s
        self.started_s = time.monotonic() - spawned
        self.log(
            f"{len(self.servers)} SGLang servers behind the router at {self.url} after "
            f"{self.started_s:.0f}s (router {self.router_started_s:.1f}s)"
        )

    def stop(self) -> None:
        """The router first (no new requests reach a stopping server), then every server."""
        for process in (self.router, *self.servers):
            try:
                process.stop()
            except Exception as error:  # stop the others all the same
                self.log(f"stopping {process.url} failed: {error}")


__all__ = [
    "RouterProcess",
    "RouterSettings",
    "SGLangFleet",
    "SGLangLaunchError",
    "check_router_args",
]
