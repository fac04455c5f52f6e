"""A fake `python -m sglang.launch_server` executable for the launch-path tests (a test double).

Parses the flags SGLang would, logs its arguments the way SGLang logs `server_args` (API key
included, so the tests can prove the resource masks it), starts a child process (as SGLang
starts its scheduler), and serves `/ready`, `/model_info` and `/get_model_info` on --host:--port after
FAKE_SGLANG_READY_AFTER_S.
FAKE_SGLANG_EXIT: exit with that code before ready. FAKE_SGLANG_IGNORE_TERM=1: ignore SIGTERM.
FAKE_SGLANG_PIDFILE: write "<own pid> <child pid>" there.
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
    if os.environ.get("FAKE_SGLANG_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if os.environ.get("FAKE_SGLANG_PIDFILE"):
        with open(os.environ["FAKE_SGLANG_PIDFILE"], "w") as handle:
            handle.write(f"{os.getpid()} {child.pid}")
    started = time.monotonic()
    ready_after = float(os.environ.get("FAKE_SGLANG_READY_AFTER_S", "0.2"))
    if os.environ.get("FAKE_SGLANG_EXIT"):
        print("RuntimeError: CUDA out of memory (fake)", flush=True)
        sys.exit(int(os.environ["FAKE_SGLANG_EXIT"]))

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


if __name__ == "__main__":
    main()
