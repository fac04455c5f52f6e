"""`make ui`: the Dagster UI (`dagster dev`) and, beside it, the reports folder over http.

The drop pages are static HTML under `<warehouse folder>/reports/`; a `file://` link to them does
nothing when clicked on the UI's http page, so this serves that folder on 127.0.0.1
(IMAGE_PIPELINE_REPORTS_PORT, default 3001) and the `drop_page` asset links its page there.

Job control: `dagster dev` runs in a process group of its own; Ctrl-C or SIGTERM to this process
is passed to it once, this process waits until it has shut down, then stops the reports server.
If `dagster dev` ends by itself, the reports server stops with it. Either way nothing is left.
"""

from __future__ import annotations

import argparse
import functools
import signal
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from orchestration.settings import REPO_ROOT, Settings
from resources.reports import reports_dir

HOST = "127.0.0.1"
STOP_GRACE_S = 60


class _QuietHandler(SimpleHTTPRequestHandler):
    """Static files of one folder; no request log in the dagster dev terminal."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_reports(directory: Path, port: int) -> ThreadingHTTPServer:
    """Serve `directory` on 127.0.0.1:`port` from a daemon thread (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer((HOST, port), handler)
    threading.Thread(target=server.serve_forever, name="reports", daemon=True).start()
    return server


def run(port: int, settings: Settings) -> int:
    directory = reports_dir(settings.warehouse().local_dir)
    try:
        reports = serve_reports(directory, settings.reports_port)
    except OSError as error:
        print(
            f"cannot serve the drop pages on {settings.reports_url}: {error}; "
            "set IMAGE_PIPELINE_REPORTS_PORT to a free port",
            file=sys.stderr,
        )
        return 1
    print(f"drop pages: {settings.reports_url}/ (serving {directory})", flush=True)
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", "workspace.yaml", "-h", HOST, "-p", str(port)]
    child = subprocess.Popen(command, cwd=REPO_ROOT, process_group=0)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        try:
            child.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        reports.shutdown()
        reports.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3000, help="the Dagster UI's port")
    args = parser.parse_args(argv)
    return run(args.port, Settings.from_env())


if __name__ == "__main__":
    sys.exit(main())
