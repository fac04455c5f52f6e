"""Starting and stopping `python -m sglang.launch_server` as a child process group.

The server binds to 127.0.0.1 only; readiness is `GET /ready` == 200 (not `/v1/models`, which
answers before warm-up ends); its output is streamed line by line to a log callback; `stop()`
sends SIGTERM to the whole process group (SGLang forks scheduler and detokenizer processes),
then SIGKILL after a grace period.

The API key never goes on the command line (`ps`, /proc/<pid>/cmdline): SGLang 0.5.23 reads no
key from its environment, but reads options from `--config FILE.yaml`, so the key is written to
a 0600 file in a private 0700 directory, passed as `--config`, and deleted once the server is
ready (it parses the file once, at start) or stopped. Log lines that echo it are masked.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
from pydantic import BaseModel, Field, field_validator

from core.process_group import stop_process_group

HOST = "127.0.0.1"
# SGLang's CPU engine (no GPU): what `make sglang-env` installs runs with exactly these. The
# substitute `sgl_kernel` only covers the torch_native attention path.
CPU_ENGINE_ARGS = (
    "--device",
    "cpu",
    "--attention-backend",
    "torch_native",
    "--disable-overlap-schedule",
)
CPU_ENGINE_ENV = {"SGLANG_USE_CPU_ENGINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# Flags the launcher owns: the loopback binding, and secrets that must not sit on a command
# line (`ps`, /proc/<pid>/cmdline). argparse also accepts unambiguous prefixes (`--hos`).
RESERVED_FLAGS = ("--host", "--port", "--api-key", "--admin-api-key")


def check_extra_args(extra_args: list[str]) -> list[str]:
    """Refuse extra arguments that would rebind the server or put a key on its command line."""
    for arg in extra_args:
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or len(name) < 4:
            continue
        clash = next((flag for flag in RESERVED_FLAGS if flag.startswith(name)), None)
        if clash:
            raise ValueError(
                f"extra_args may not set {clash} ({arg!r}): the launcher binds {HOST} on its own "
                "port and passes the API key through the environment"
            )
    return extra_args


class SGLangLaunchError(RuntimeError):
    """The server did not become ready; the message says why and shows its last log lines."""


class LaunchSettings(BaseModel):
    model_path: str
    chat_template: str | None = Field(
        default=None,
        description="--chat-template; None: the model's own (HF tokenizer) template. Name one "
        "for checkpoints without a template (liuhaotian LLaVA: vicuna_v1.1).",
    )
    tokenizer_path: str | None = None
    tp_size: int = Field(default=1, ge=1)
    dp_size: int = Field(default=1, ge=1)
    port: int = Field(default=0, ge=0, le=65535, description="0: pick a free port.")
    mem_fraction_static: float | None = Field(default=None, gt=0, le=1)
    context_length: int | None = Field(default=None, ge=1)
    served_model_name: str | None = None
    enable_metrics: bool = True
    enable_cache_report: bool = True
    compact_json: bool = Field(
        default=True, description="--constrained-json-disable-any-whitespace"
    )
    schedule_policy: str | None = "lpm"
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment for the server (SGLANG_USE_CPU_ENGINE=1 on CPU hosts).",
    )

    _check_extra = field_validator("extra_args")(check_extra_args)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def build_args(settings: LaunchSettings, port: int) -> list[str]:
    """Arguments after the executable, without the API key (added by `SGLangProcess.argv`)."""
    args = ["--model-path", settings.model_path, "--host", HOST, "--port", str(port)]
    if settings.chat_template:
        args += ["--chat-template", settings.chat_template]
    args += ["--tp-size", str(settings.tp_size), "--dp-size", str(settings.dp_size)]
    if settings.tokenizer_path:
        args += ["--tokenizer-path", settings.tokenizer_path]
    if settings.mem_fraction_static is not None:
        args += ["--mem-fraction-static", str(settings.mem_fraction_static)]
    if settings.context_length is not None:
        args += ["--context-length", str(settings.context_length)]
    if settings.served_model_name:
        args += ["--served-model-name", settings.served_model_name]
    if settings.schedule_policy:
        args += ["--schedule-policy", settings.schedule_policy]
    if settings.enable_metrics:
        args.append("--enable-metrics")
    if settings.enable_cache_report:
        args.append("--enable-cache-report")
    if settings.compact_json:
        args.append("--constrained-json-disable-any-whitespace")
    args += settings.extra_args
    return args


class SGLangProcess:
    """One launched server. `start()` returns once `/ready` answers 200, or raises and cleans up."""

    name = "SGLang"  # in log lines and errors (the router subclass says which process it is)

    def __init__(
        self,
        settings: LaunchSettings,
        *,
        command: Sequence[str] = (sys.executable, "-m", "sglang.launch_server"),
        api_key: str | None = None,
        ready_timeout_s: float = 1800.0,
        stop_grace_s: float = 30.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.command = list(command)
        self.api_key = api_key
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self.log = log
        self.port = settings.port or free_port()
        self.process: subprocess.Popen[str] | None = None
        self.tail: deque[str] = deque(maxlen=40)
        self._reader: threading.Thread | None = None
        self._secret_dir: Path | None = None
        self.started_s: float | None = None  # seconds from spawn to /ready

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def argv(self) -> list[str]:
        """The command line: no secret in it; the key file is `--config` (see module doc)."""
        args = build_args(self.settings, self.port)
        if self._secret_dir is not None:
            args += ["--config", str(self._secret_dir / "server-secrets.yaml")]
        return self.command + args

    def printable_argv(self) -> str:
        return " ".join(self.argv())

    def _write_secrets(self) -> None:
        if not self.api_key:
            return
        self._secret_dir = Path(tempfile.mkdtemp(prefix="sglang-secrets-"))  # mode 0700
        path = self._secret_dir / "server-secrets.yaml"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump({"api-key": self.api_key}, handle)  # JSON is YAML: no quoting pitfalls

    def _remove_secrets(self) -> None:
        if self._secret_dir is not None:
            shutil.rmtree(self._secret_dir, ignore_errors=True)

    def _mask(self, line: str) -> str:
        return line.replace(self.api_key, "***") if self.api_key else line

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            line = self._mask(line.rstrip())
            self.tail.append(line)
            self.log(f"[{self.name.lower()}] {line}")

    def start(self) -> None:
        self._write_secrets()
        self.log(f"starting {self.name}: {self.printable_argv()}")
        spawned = time.monotonic()
        try:
            self.process = subprocess.Popen(
                self.argv(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
                env={**os.environ, **self.settings.env},
                start_new_session=True,  # its own process group: stop() reaches every child
            )
        except OSError as error:
            self._remove_secrets()
            raise SGLangLaunchError(
                f"cannot start SGLang ({self.command[0]}): {error}; is sglang installed on "
                "this host (pip install 'image-labeling-pipeline[sglang]')?"
            ) from error
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        finally:
            self._remove_secrets()  # read once at start-up: it need not outlive it
        self.started_s = time.monotonic() - spawned
        self.log(f"{self.name} ready at {self.url} after {self.started_s:.0f}s")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        last = "no answer yet"
        while True:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise SGLangLaunchError(
                    f"{self.name} exited with code {code} before it was ready; last log lines:\n"
                    + "\n".join(self.tail)
                )
            try:
                ready, last = self.ready()
                if ready:
                    return
            except httpx.HTTPError as error:
                last = f"{type(error).__name__} on {self.url}"
            if time.monotonic() > deadline:
                raise SGLangLaunchError(
                    f"{self.name} at {self.url} not ready after {self.ready_timeout_s:.0f}s "
                    f"({last}); last log lines:\n" + "\n".join(self.tail)
                )
            time.sleep(0.5)

    def ready(self) -> tuple[bool, str]:
        """Whether it is ready, and if not what it answered (for the timeout's message)."""
        response = httpx.get(f"{self.url}/ready", timeout=5.0)
        return response.status_code == 200, f"/ready answered {response.status_code}"

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period. Safe to call twice.

        The group is signalled even when the leader already exited: SGLang's scheduler and
        detokenizer processes can outlive a crashed launcher and keep holding the GPU.
        """
        self._remove_secrets()
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self.log(f"stopping {self.name} (pid {process.pid})")
        stop_process_group(
            process,
            self.stop_grace_s,
            on_kill=lambda: self.log(f"{self.name} did not stop on SIGTERM; sending SIGKILL"),
        )
        self._join_reader()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
