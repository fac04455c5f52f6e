"""A no-op run under `dagster dev`: the unchanged demo drop, run again through the run launcher.

What a user sees after `make demo` then `make ui`: the drop `samples` is ingested already, and a
run of the pipeline job for it is launched on the `dagster dev` instance (the run launcher starts
a process, the job's executor runs every step). We ingest the samples with the demo, start
`dagster dev` (own DAGSTER_HOME in a temp folder, a free port on 127.0.0.1, its own process
group), launch one run of partition `samples` with `dagster job launch`, and report the run's
duration (start to end, as the UI shows it) and launch-to-finish wall time. Not a test: a
measurement on whatever machine runs it.
Usage: python benchmarks/noop_run.py [--repo DIR] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.report import print_table, write_json  # noqa: E402
from core.process_group import stop_process_group  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout_s:.0f}s")


def _run_status(env: dict[str, str], repo: Path) -> list[dict]:
    """Every run on the instance, read in a fresh process (the instance lives in DAGSTER_HOME)."""
    code = (
        "import json, dagster as dg\n"
        "inst = dg.DagsterInstance.get()\n"
        "out = []\n"
        "for r in inst.get_runs():\n"
        "    rec = inst.get_run_record_by_id(r.run_id)\n"
        "    out.append({'run_id': r.run_id, 'status': r.status.value, "
        "'start': rec.start_time, 'end': rec.end_time, 'tags': dict(r.tags)})\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=repo, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(repo: Path, timeout_s: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="noop-run-"))
    home = work / "home"
    home.mkdir()
    shutil.copy(repo / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "IMAGE_DROP_ROOT": str(work / "drops"),
        "IMAGE_PIPELINE_WAREHOUSE": str(work / "warehouse.duckdb"),
        "IMAGE_DROP_SENSOR": "stopped",  # the run below is launched explicitly, the same each time
    }
    bin_dir = Path(sys.executable).parent
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "orchestration.demo"],
        env=env,
        cwd=repo,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    demo_s = time.perf_counter() - started
    port = _free_port()
    log = (work / "dagster_dev.log").open("w")
    dev = subprocess.Popen(
        [
            str(bin_dir / "dagster"),
            "dev",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        cwd=repo,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killed as one below
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/server_info", timeout_s=180)
        before = {r["run_id"] for r in _run_status(env, repo)}
        launched = time.perf_counter()
        subprocess.run(
            [
                str(bin_dir / "dagster"),
                "job",
                "launch",
                "-w",
                "workspace.yaml",
                "-j",
                "image_pipeline",
                "--tags",
                json.dumps({"dagster/partition": "samples"}),
            ],
            env=env,
            cwd=repo,
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + timeout_s
        run = None
        while time.monotonic() < deadline:
            runs = [r for r in _run_status(env, repo) if r["run_id"] not in before]
            if runs and runs[0]["status"] in {"SUCCESS", "FAILURE", "CANCELED"}:
                run = runs[0]
                break
            time.sleep(5)
        if run is None:
            raise TimeoutError(f"the run did not finish in {timeout_s:.0f}s")
        wall_s = time.perf_counter() - launched
    finally:
        stop_process_group(dev, grace_s=30)
        log.close()
    shutil.rmtree(work, ignore_errors=True)
    return {
        "repo": str(repo),
        "demo_s": round(demo_s, 1),
        "run_status": run["status"],
        "run_s": round(run["end"] - run["start"], 1),
        "launch_to_finish_s": round(wall_s, 1),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to run")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    results = measure(args.repo.resolve(), args.timeout)
    print_table(
        [
            ("run of the unchanged demo drop (start to end)", f"{results['run_s']} s"),
            ("launch to finished", f"{results['launch_to_finish_s']} s"),
            ("run status", results["run_status"]),
            ("first demo run (in process, for scale)", f"{results['demo_s']} s"),
        ]
    )
    write_json(results, args.out)
    return results


if __name__ == "__main__":
    main()
