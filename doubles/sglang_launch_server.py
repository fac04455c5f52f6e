"""A fake `python -m sglang.launch_server` executable for the launch-path tests (a test double).

Parses the flags SGLang would, logs its arguments the way SGLang logs `server_args` (API key
included, so the tests can prove the resource masks it), starts a child process (as SGLang
starts its scheduler), and serves `/ready`, `/model_info` and `/get_model_info` on --host:--port after
FAKE_SGLANG_READY_AFTER_S.
FAKE_SGLANG_EXIT: exit with that code before ready. FAKE_SGLANG_IGNORE_TERM=1: ignore SIGTERM.
FAKE_SGLANG_PIDFILE: write "<own pid> <child pid>" there.
FAKE_SGLANG_JOURNAL: append "started <unix time>" at start and "stopped <unix time>" on SIGTERM,
so a test sees from outside when a server lived.
FAKE_SGLANG_ANSWERS=schema: serve the whole API with the SGLang double (`doubles/sglang_server.py`,
schema-valid answers, no model) instead, so a pipeline run can extract through it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chat-template")
    parser.add_argument("--api-key")
    parser.add_argument("--config")  # SGLang: options from a YAML file (the launcher's key)
    args, rest = parser.parse_known_args()
    if args.config:
        with open(args.config) as handle:
            args.api_key = json.load(handle).get("api-key", args.api_key)
    print(
        f"server_args=ServerArgs(model_path={args.model_path!r}, host={args.host!r}, "
        f"port={args.port}, api_key={args.api_key!r}, rest={rest})",
        flush=True,
    )
    journal = os.environ.get("FAKE_SGLANG_JOURNAL")

    def note(word: str) -> None:
        if journal:
            with open(journal, "a") as handle:
                handle.write(f"{word} {time.time()!r}\n")

    note("started")
    if os.environ.get("FAKE_SGLANG_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:

        def stop(signum: int, frame: object) -> None:
            note("stopped")
            os._exit(0)

        signal.signal(signal.SIGTERM, stop)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if os.environ.get("FAKE_SGLANG_PIDFILE"):
        with open(os.environ["FAKE_SGLANG_PIDFILE"], "w") as handle:
            handle.write(f"{os.getpid()} {child.pid}")
    started = time.monotonic()
    ready_after = float(os.environ.get("FAKE_SGLANG_READY_AFTER_S", "0.2"))
    if os.environ.get("FAKE_SGLANG_EXIT"):
        print("RuntimeError: CUDA out of memory (fake)", flush=True)
        sys.exit(int(os.environ["FAKE_SGLANG_EXIT"]))

    if os.environ.get("FAKE_SGLANG_ANSWERS") == "schema":
        serve_double(args.host, args.port, args.model_path, started + ready_after)
        return

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            up = time.monotonic() - started >= ready_after
            body = b""
            if self.path not in ("/ready", "/model_info", "/get_model_info"):
                code = 404
            elif not up:
                code = 503
            else:
                code = 200
                if self.path in ("/model_info", "/get_model_info"):
                    info = {"model_path": args.model_path, "served_model_name": args.model_path}
                    body = json.dumps(info).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print("The server is fired up and ready to roll!", flush=True)
    server.serve_forever()


def serve_double(host: str, port: int, model_path: str, ready_at: float) -> None:
    """The SGLang double on host:port until SIGTERM (its answers: schema-valid, no model)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from doubles.sglang_server import FakeSGLangConfig, FakeSGLangServer

    assert host == "127.0.0.1", host
    time.sleep(max(0.0, ready_at - time.monotonic()))
    server = FakeSGLangServer(None, FakeSGLangConfig(model_path=model_path, answers="schema"))
    server.port = port
    server.start()
    print("The server is fired up and ready to roll!", flush=True)
    while True:
        time.sleep(0.5)


if __name__ == "__main__":
    main()
