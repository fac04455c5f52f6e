"""A real `make ui` (`python -m orchestration.ui`: `dagster dev` plus the drop pages' server) on
free 127.0.0.1 ports, and a headless Chromium to look at it.

The launcher runs in a session of its own and passes a stop signal on to `dagster dev` (which
stops the webserver, the daemon and the code server, its children), waits for it, then stops the
reports server; stopping signals the launcher's process group and nothing is left behind.
"""

from __future__ import annotations

import contextlib
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

from core.process_group import stop_process_group
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


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc (empty where there is no /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:300]
    except OSError:
        return ""


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def dagster_dev(home: Path, env: dict[str, str], log_path: Path) -> Iterator[DagsterDev]:
    """What `make ui` runs (`python -m orchestration.ui`) on free ports with
    DAGSTER_HOME=`home`, started at once (it loads while the caller works; `wait_ready` waits
    for it) and stopped, group and all."""
    port, reports_port = free_port(), free_port()
    command = [sys.executable, "-m", "orchestration.ui", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={
                **env,
                "DAGSTER_HOME": str(home),
                "IMAGE_PIPELINE_REPORTS_PORT": str(reports_port),
            },
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = DagsterDev(f"http://127.0.0.1:{port}", process, log_path, reports_port)
    try:
        yield server
    finally:
        server.stop()


class DagsterDev:
    """A started `make ui`: its URLs, a wait for its code location, and a clean stop."""

    def __init__(
        self, url: str, process: subprocess.Popen, log_path: Path, reports_port: int
    ) -> None:
        self.url, self.process, self.log_path = url, process, log_path
        self.reports_port = reports_port
        self.reports_url = f"http://127.0.0.1:{reports_port}"

    def stop(self, sig: signal.Signals = signal.SIGTERM, grace_s: float = 60) -> None:
        """Signal the launcher's group (a terminal's Ctrl-C is SIGINT to it) and wait for it;
        then SIGTERM and SIGKILL whatever is left of the group."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        stop_process_group(self.process, grace_s=20)  # whatever of the group is left

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
