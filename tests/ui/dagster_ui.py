"""A real `dagster dev` on a free 127.0.0.1 port and a headless Chromium to look at it.

`dagster dev` starts the webserver, the daemon and a code server as its children; it runs in a
session of its own, so stopping it signals that whole process group and nothing is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestration.settings import REPO_ROOT

# Where the system Chromium lives; IMAGE_PIPELINE_CHROMIUM names another binary.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
LOCATION_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def find_chromium() -> str | None:
    configured = os.environ.get("IMAGE_PIPELINE_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 10) -> dict:
    """One GraphQL request to the webserver, as the UI sends it."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _location_loaded(url: str) -> bool:
    """True once the code location has loaded; raises if it failed to load."""
    try:
        answer = graphql(url, LOCATION_QUERY, timeout=5)
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return False
    entries = answer.get("data", {}).get("workspaceOrError", {}).get("locationEntries") or []
    for entry in entries:
        loaded = entry.get("locationOrLoadError") or {}
        if loaded.get("__typename") == "PythonError":
            raise RuntimeError(f"code location {entry['name']} failed: {loaded['message']}")
    return bool(entries) and all(
        e["loadStatus"] == "LOADED" and e.get("locationOrLoadError") for e in entries
    )


def _stop(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the process group (dagster dev shuts its children down), SIGKILL stragglers."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; children of the group may still be shutting down
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@contextmanager
def dagster_dev(home: Path, env: dict[str, str], log_path: Path) -> Iterator[DagsterDev]:
    """`dagster dev -w workspace.yaml` on a free port with DAGSTER_HOME=`home`, started at once
    (it loads while the caller works; `wait_ready` waits for it) and stopped, group and all."""
    port = free_port()
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**env, "DAGSTER_HOME": str(home)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield DagsterDev(f"http://127.0.0.1:{port}", process, log_path)
    finally:
        _stop(process)


class DagsterDev:
    """A started `dagster dev`: its URL, and a wait for its code location."""

    def __init__(self, url: str, process: subprocess.Popen, log_path: Path) -> None:
        self.url, self.process, self.log_path = url, process, log_path

    def wait_ready(self, timeout_s: float = 240) -> str:
        deadline = time.monotonic() + timeout_s
        while not _location_loaded(self.url):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"dagster dev exited {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"dagster dev not ready in {timeout_s}s:\n{self.log_tail()}")
            time.sleep(1)
        return self.url

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
