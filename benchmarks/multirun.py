"""Many runs at once, on the engines a cluster would use: the whole pipeline under `dagster-daemon`.

What it starts (all on 127.0.0.1, all stopped at the end):
- PostgreSQL 15 (tools/lakepg.py) holding Dagster's instance storage (deploy/dagster-postgres.yaml:
  QueuedRunCoordinator, DefaultRunLauncher: each run its own process) and the lake's catalog;
- a simulated VLM fleet: 2 SGLang test doubles (doubles/sglang_server.py, answers a function of the
  image) behind the real `sglang-router` from .venv-sglang;
- `dagster-daemon run` with the drop sensor on, and a reader process querying counts the whole time.

Then it drops D folders of N images (one image in two of them) with `_READY` markers and waits
for every drop's run to succeed, at most `max_concurrent_runs` (3) at once. One run's process is
killed with SIGKILL while it is inside a warehouse write (file backend: it holds the write lock;
lake: its catalog connection has an open write transaction); Dagster's run retries re-execute it
from the failed step. Each target (`lake`, `file`) gets a phase of its own; then the same drops
run one after the other into a fresh DuckDB file, and each phase's tables are compared with it row
for row. Not compared row for row: run ids, wall-clock times, latencies, and what depends on the
order in which runs committed (which drop first brought an image and did its model work, a drift
check's reference drops, the review queue's near-duplicate conflicts "in an earlier drop");
for those, what must hold in any order is checked instead (one `images` row per image, one
first file per image, `images_new` summing to the images). Reported per run: the seconds its
process waited on the warehouse for other processes (`core.warehouse.wait_seconds()`, logged
after every step).

Usage: python benchmarks/multirun.py [--targets lake,file] [--drops 4] [--images 60] [--out F]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import print_table, write_json
from core.process_group import stop_process_group

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTANCE_YAML = REPO_ROOT / "deploy" / "dagster-postgres.yaml"
SGLANG_PYTHON = REPO_ROOT / ".venv-sglang" / "bin" / "python"
JOB = "image_pipeline"
# Tables that only ever gain rows: the reader checks their counts never shrink.
GROWING = ("image_files", "images", "clip_zero_shot", "vlm_extractions", "clip_embeddings")
# Which drop first brought an image, and so which run did its model work, depends on which run
# committed first; these columns are compared through what must hold whatever the order (see
# `order_invariants`), not row for row.
ARRIVAL_ORDER = {
    "images": ("first_drop_id", "first_path"),
    "image_files": ("is_duplicate",),
    "drops": ("images_new",),
    "vlm_extractions": ("drop_id",),
    "clip_failures": ("drop_id",),
    # a near-duplicate conflict is looked for "in this drop or an earlier one" (core/review)
    "review_queue": (
        "rank",
        "score",
        "reasons",
        "near_duplicate_conflict",
        "near_duplicate_of",
        "conflict_fields",
    ),
}
# A drift check compares a drop with the drops committed before it: its outcome depends on the
# order too. Its rows are compared by their key (asset, check, drop), the rest of them not.
ORDER_DEPENDENT_CHECKS = {"label_drift"}
QUALITY_KEY = ("asset", "check_name", "partition")
# Per-run history: a row per run and check (run_id is in the key). A run killed after some of its
# checks were written keeps those rows; its retry re-executes from the failed step and writes that
# step's checks again. The end state compared is each check's latest outcome, as the demo's report
# shows it: the newest row per (asset, check, drop).
PER_RUN_TABLES = {"quality_results": "evaluated_at"}
WAIT_LINE = re.compile(r"warehouse wait: ([0-9.]+) s in step .*?([0-9.]+) s in this run")
# The run worker's own engine event (in-process executor): the process that runs every step.
PID_LINE = re.compile(r"Executing steps in process \(pid: (\d+)\)")
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


# --- images -------------------------------------------------------------------------------------


def _jpeg(seed: int) -> bytes:
    """A small picture of its own (different bytes and pixels per seed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def make_drops(root: Path, drops: int, images: int) -> dict[str, list[str]]:
    """`drops` folders of `images` pictures; the first picture of drop 0 is also in drop 1."""
    shared = _jpeg(10**6)
    layout: dict[str, list[str]] = {}
    for d in range(drops):
        name = f"drop-{d}"
        folder = root / name
        folder.mkdir(parents=True)
        names = []
        for i in range(images):
            if d in (0, 1) and i == 0:
                data, file = shared, f"shared-{d}.jpg"
            else:
                data, file = _jpeg(d * 10_000 + i), f"img-{i:03d}.jpg"
            (folder / file).write_bytes(data)
            names.append(file)
        layout[name] = names
    return layout


def mark_ready(root: Path, layout: dict[str, list[str]]) -> None:
    for name in layout:
        (root / name / "_READY").write_bytes(b"")


# --- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Fleet:
    """Two SGLang doubles behind the real sglang-router."""

    servers: list[subprocess.Popen] = field(default_factory=list)
    router: Any = None

    @property
    def url(self) -> str:
        return str(self.router.url)

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        for server in self.servers:
            stop_process_group(server, grace_s=5)


def start_fleet(work: Path, servers: int, service_time_s: float) -> Fleet:
    from core.vlm.sglang_router import RouterProcess, RouterSettings

    if not SGLANG_PYTHON.exists():
        raise RuntimeError(f"{SGLANG_PYTHON} is missing: `make sglang-env` installs sglang-router")
    fleet = Fleet()
    try:
        urls = []
        for index in range(servers):
            port_file = work / f"sglang-{index}.port"
            fleet.servers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "doubles.sglang_server",
                        *("--servers", "1", "--capacity", "4"),
                        *("--service-time", str(service_time_s), "--vary-by", "image"),
                        *("--port-file", str(port_file)),
                    ],
                    cwd=REPO_ROOT,
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            deadline = time.monotonic() + 60
            while not port_file.exists():
                if time.monotonic() > deadline or fleet.servers[-1].poll() is not None:
                    raise RuntimeError("an SGLang double did not start")
                time.sleep(0.1)
            urls.append(f"http://127.0.0.1:{port_file.read_text().strip()}")
        fleet.router = RouterProcess(
            urls,
            RouterSettings(policy="round_robin"),
            python=str(SGLANG_PYTHON),
            ready_timeout_s=120,
            log=lambda _line: None,
        )
        fleet.router.start()
    except BaseException:
        fleet.stop()
        raise
    return fleet


# --- PostgreSQL ---------------------------------------------------------------------------------


@dataclass
class Postgres:
    cluster: Any

    @property
    def port(self) -> int:
        return int(self.cluster.port)

    def password(self) -> str:
        """From the cluster's libpq passfile (host:port:db:user:password)."""
        return self.cluster.passfile.read_text().strip().split(":", 4)[4]

    def create_database(self, name: str) -> None:
        self.cluster.psql(f"CREATE DATABASE {name}")

    def env(self, database: str) -> dict[str, str]:
        """libpq's variables for Dagster's storage (deploy/dagster-postgres.yaml) and the lake."""
        return {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": "postgres",
            "PGPASSWORD": self.password(),
            "DAGSTER_PG_DB": database,
            **self.cluster.env(),
        }

    def lake_target(self) -> tuple[str, str]:
        return f"ducklake:postgres:{self.cluster.conninfo()}", str(self.cluster.lake_data)


def postgres_instance_possible() -> bool:
    """PostgreSQL can start here and Dagster can keep its instance there (dagster-postgres)."""
    try:
        import dagster_postgres  # noqa: F401

        from tools.lakepg import available
    except ImportError:
        return False
    return available() is None


def start_postgres(work: Path) -> Postgres:
    from tools.lakepg import Cluster

    cluster = Cluster(work / "pg", free_port())
    cluster.start(fast=True)
    cluster.lake_data.mkdir(parents=True, exist_ok=True)
    return Postgres(cluster)


# --- the warehouse ------------------------------------------------------------------------------


def open_target(target: str, data_path: str | None) -> Any:
    from core.warehouse import open_warehouse

    return open_warehouse(target, data_path=data_path)


def reader_loop(target: str, data_path: str | None, stop: Path, out: Path) -> None:
    """A user's query loop in its own process: counts of the growing tables, one query a time."""
    warehouse = open_target(target, data_path)
    sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in GROWING)
    answers, errors, before_tables = 0, [], 0
    shrinks: list[str] = []
    last: tuple[int, ...] | None = None
    started = time.monotonic()
    while not stop.exists():
        try:
            counts = tuple(int(n) for n in warehouse.rows(sql)[0])
        except Exception as error:
            text = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            if answers == 0 and ("does not exist" in text or "no warehouse" in text):
                before_tables += 1  # no run has created the tables yet
            else:
                errors.append(text)
            time.sleep(0.05)
            continue
        answers += 1
        if last is not None:
            shrinks += [
                f"{t}: {a} -> {b}" for t, a, b in zip(GROWING, last, counts, strict=True) if b < a
            ]
        last = counts
        time.sleep(0.02)
    out.write_text(
        json.dumps(
            {
                "answers": answers,
                "errors": errors,
                "before_tables": before_tables,
                "shrinks": shrinks,
                "last_counts": dict(zip(GROWING, last or (), strict=False)),
                "seconds": time.monotonic() - started,
            }
        )
    )


def snapshot(warehouse: Any) -> dict[str, dict[str, Any]]:
    """Every table and view: its columns (name, type) and its rows."""
    with warehouse.reader() as conn:
        names = [
            str(row[0])
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_catalog = current_database() AND table_schema = current_schema()"
                " ORDER BY 1"
            ).fetchall()
        ]
        tables = {}
        for name in names:
            cursor = conn.execute(f'SELECT * FROM "{name}"')
            columns = [(d[0], str(d[1])) for d in cursor.description]
            tables[name] = {"columns": columns, "rows": cursor.fetchall()}
    return tables


def _compared(table: str, columns: list[tuple[str, str]]) -> list[int]:
    """Indexes of the columns compared row for row: not run ids, wall-clock times (every
    TIMESTAMPTZ the pipeline writes: *_at), latencies, or arrival-order columns."""
    skip = set(ARRIVAL_ORDER.get(table, ()))
    return [
        i
        for i, (name, kind) in enumerate(columns)
        if name not in skip
        and name not in ("run_id", "latency_ms")
        and "TIME ZONE" not in kind.upper()
        and kind.upper() != "TIMESTAMPTZ"
    ]


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _canonical(v)) for k, v in value.items()))
    return value


def _types(columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Column names and types, a fixed-size array as a list: the lake has no FLOAT[64]."""
    return [(name, re.sub(r"\[\d+\]", "[]", kind)) for name, kind in columns]


def latest_per_check(table: dict[str, Any], stamp: str) -> dict[str, Any]:
    """The newest row per (asset, check, partition) of a per-run history table."""
    names = [name for name, _ in table["columns"]]
    key = [names.index(c) for c in QUALITY_KEY]
    at = names.index(stamp)
    latest: dict[tuple, tuple] = {}
    for row in table["rows"]:
        k = tuple(row[i] for i in key)
        if k not in latest or row[at] > latest[k][at]:
            latest[k] = row
    return {**table, "rows": list(latest.values())}


def compare(reference: dict, other: dict) -> dict[str, Any]:
    """Row-for-row comparison of two snapshots (multisets of the compared columns); of a per-run
    history table, each check's latest row (the superseded ones counted in `left_out`)."""
    differences: dict[str, str] = {}
    left_out: dict[str, int] = {}
    rows = 0
    for table in sorted(set(reference) | set(other)):
        if table not in reference or table not in other:
            differences[table] = "missing in " + ("serial" if table not in reference else "this")
            continue
        ref, got = reference[table], other[table]
        if table in PER_RUN_TABLES:
            ref = latest_per_check(ref, PER_RUN_TABLES[table])
            kept = latest_per_check(got, PER_RUN_TABLES[table])
            if len(kept["rows"]) != len(got["rows"]):
                left_out[table] = len(got["rows"]) - len(kept["rows"])
            got = kept
        if _types(ref["columns"]) != _types(got["columns"]):
            differences[table] = f"columns differ: {ref['columns']} vs {got['columns']}"
            continue
        keep = _compared(table, ref["columns"])
        names = [name for name, _ in ref["columns"]]

        def project(
            table_rows: list[tuple], keep: list[int] = keep, names: list[str] = names
        ) -> list[tuple]:
            projected = []
            for row in table_rows:
                columns = keep
                if "check_name" in names and row[names.index("check_name")] in (
                    ORDER_DEPENDENT_CHECKS
                ):
                    columns = [names.index(c) for c in QUALITY_KEY]
                projected.append(tuple(_canonical(row[i]) for i in columns))
            return sorted(projected, key=repr)

        a, b = project(ref["rows"]), project(got["rows"])
        if a != b:
            only_ref = [r for r in a if r not in b][:3]
            only_got = [r for r in b if r not in a][:3]
            differences[table] = (
                f"{len(a)} vs {len(b)} rows; only serial: {only_ref}; only here: {only_got}"
            )
        rows += len(b)
    return {
        "rows_compared": rows,
        "tables": len(reference),
        "differences": differences,
        "left_out": left_out,
    }


def order_invariants(snap: dict) -> list[str]:
    """What must hold whatever order the runs committed in; a list of violations."""
    problems = []
    images = snap["images"]
    icols = [c for c, _ in images["columns"]]
    ids = [r[icols.index("image_id")] for r in images["rows"]]
    if len(ids) != len(set(ids)):
        problems.append(f"duplicate image_id in images: {len(ids) - len(set(ids))}")
    files = snap["image_files"]
    cols = [c for c, _ in files["columns"]]
    firsts: dict[str, int] = {}
    for row in files["rows"]:
        if not row[cols.index("is_duplicate")]:
            image = row[cols.index("image_id")]
            firsts[image] = firsts.get(image, 0) + 1
    if sorted(firsts) != sorted(ids) or any(n != 1 for n in firsts.values()):
        problems.append("not exactly one non-duplicate image_files row per image")
    drops = snap["drops"]
    new = sum(r[[c for c, _ in drops["columns"]].index("images_new")] for r in drops["rows"])
    if new != len(ids):
        problems.append(f"drops.images_new sums to {new}, images holds {len(ids)}")
    for row in images["rows"]:
        first = (row[icols.index("first_drop_id")], row[icols.index("first_path")])
        paired = [
            r
            for r in files["rows"]
            if (r[cols.index("drop_id")], r[cols.index("path")]) == first
            and r[cols.index("image_id")] == row[icols.index("image_id")]
        ]
        if len(paired) != 1:
            problems.append(f"images.first_path {first} is not a file of that image")
    return problems


# --- the Dagster instance -----------------------------------------------------------------------


def pipeline_env(target: str, data_path: str | None, drop_root: Path, fleet: Fleet) -> dict:
    return {
        "IMAGE_PIPELINE_ENV": "local",
        "IMAGE_PIPELINE_WAREHOUSE": target,
        **({"IMAGE_PIPELINE_LAKE_DATA_PATH": data_path} if data_path else {}),
        "IMAGE_DROP_ROOT": str(drop_root),
        "IMAGE_DROP_SENSOR": "running",
        "IMAGE_DROP_INTERVAL_SECONDS": "2",
        "IMAGE_DROP_QUIET_SECONDS": "600",  # only the _READY markers make a drop ready
        "IMAGE_PIPELINE_VLM_BACKEND": "sglang",
        "IMAGE_PIPELINE_SGLANG_URL": fleet.url,
        "IMAGE_PIPELINE_LABELLED": "none",
        "IMAGE_PIPELINE_CLIP_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _logs(instance: Any, run_id: str) -> list[Any]:
    return list(instance.all_logs(run_id))


def run_pid(instance: Any, run_id: str) -> int | None:
    for entry in _logs(instance, run_id):
        found = PID_LINE.search(entry.user_message or "")
        if found:
            return int(found.group(1))
    return None


def steps_started(instance: Any, run_id: str) -> list[str]:
    import dagster as dg

    return [
        entry.step_key
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        if entry.step_key
    ]


def waits_of(instance: Any, run_id: str) -> tuple[float | None, dict[str, float]]:
    """The run process's warehouse wait (the last step's cumulative figure) and each step's."""
    per_step: dict[str, float] = {}
    total = None
    for entry in _logs(instance, run_id):
        found = WAIT_LINE.search(entry.user_message or "")
        if found and entry.step_key:
            per_step[entry.step_key] = float(found.group(1))
            total = float(found.group(2))
    return total, per_step


# --- "inside a warehouse write" -----------------------------------------------------------------


def holds_file_write_lock(pid: int, database: Path) -> bool:
    """The process holds the exclusive flock writers take around a transaction (/proc/locks)."""
    lock = database.with_name(database.name + ".lock")
    try:
        inode = os.stat(lock).st_ino
        text = Path("/proc/locks").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        if (
            len(parts) >= 6
            and parts[1:4] == ["FLOCK", "ADVISORY", "WRITE"]
            and parts[4] == str(pid)
            and parts[5].rsplit(":", 1)[-1] == str(inode)
        ):
            return True
    return False


def _socket_ports(pid: int) -> set[int]:
    """Local TCP ports of the process's sockets (from /proc)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


class CatalogWrites:
    """Which processes have a catalog transaction open that has written (PostgreSQL assigned it
    a transaction id): a lake commit in progress."""

    def __init__(self, pg: Postgres) -> None:
        import psycopg2

        self.conn = psycopg2.connect(
            host="127.0.0.1", port=pg.port, user="postgres", password=pg.password(), dbname="lake"
        )
        self.conn.autocommit = True

    def of(self, pid: int) -> bool:
        ports = _socket_ports(pid)
        if not ports:
            return False
        with self.conn.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s)"
                " AND backend_xid IS NOT NULL",
                (list(ports),),
            )
            return int(cursor.fetchone()[0]) > 0

    def close(self) -> None:
        self.conn.close()


# --- one phase: many runs at once ---------------------------------------------------------------


@dataclass
class Phase:
    name: str
    target: str
    data_path: str | None
    work: Path
    results: dict[str, Any] = field(default_factory=dict)


def run_concurrent(
    phase: Phase,
    layout: dict[str, list[str]],
    source: Path,
    fleet: Fleet,
    pg: Postgres | None,
    *,
    kill: bool,
    timeout_s: float,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any]]:
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    home = phase.work / "dagster_home"
    home.mkdir(parents=True)
    drop_root = phase.work / "drops"
    drop_root.mkdir()
    env = pipeline_env(phase.target, phase.data_path, drop_root, fleet)
    if pg is not None:
        database = f"dagster_{phase.name}"
        pg.create_database(database)
        env |= pg.env(database)
        shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
    else:  # no PostgreSQL here: the same instance settings on SQLite (one host only)
        text = INSTANCE_YAML.read_text()
        (home / "dagster.yaml").write_text(text.split("# The daemon dequeues", 1)[1])
    env["DAGSTER_HOME"] = str(home)
    result: dict[str, Any] = {"target": phase.name, "instance": "postgres" if pg else "sqlite"}
    daemon_log = phase.work / "daemon.log"
    stop_reader = phase.work / "reader.stop"
    reader_out = phase.work / "reader.json"
    with environment(env):
        instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
        gpu_slots = len(fleet.servers)
        instance.event_log_storage.set_concurrency_slots("gpu", gpu_slots)
        result["gpu_pool"] = gpu_slots
        max_runs = instance.get_concurrency_config().run_queue_config.max_concurrent_runs
        result["max_concurrent_runs"] = max_runs
        full_env = {**os.environ}
        reader = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--reader",
                json.dumps([phase.target, phase.data_path, str(stop_reader), str(reader_out)]),
            ],
            cwd=REPO_ROOT,
            env=full_env,
            start_new_session=True,
        )
        with daemon_log.open("wb") as out:
            daemon = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("dagster-daemon")),
                    "run",
                    "-w",
                    "workspace.yaml",
                ],
                cwd=REPO_ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = time.monotonic()
        catalog = CatalogWrites(pg) if (kill and pg is not None and phase.data_path) else None
        try:
            for name in layout:
                shutil.copytree(source / name, drop_root / name)
            mark_ready(drop_root, layout)
            log(f"[{phase.name}] {len(layout)} drops ready; daemon starting")
            result["kill"] = watch(
                phase, instance, layout, kill, catalog, started + timeout_s, daemon, daemon_log, log
            )
            result["seconds"] = round(time.monotonic() - started, 1)
        finally:
            if catalog is not None:
                catalog.close()
            stop_process_group(daemon, grace_s=30)
            stop_reader.write_text("")
            try:
                reader.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop_process_group(reader, grace_s=1)
        result["reader"] = json.loads(reader_out.read_text()) if reader_out.exists() else None
        result["runs"] = run_table(instance)
        result["max_running_at_once"] = max_overlap(result["runs"])
        instance.dispose()
        tables = snapshot(open_target(phase.target, phase.data_path))  # its credentials: env
    return result, tables


def watch(
    phase: Phase,
    instance: Any,
    layout: dict[str, list[str]],
    kill: bool,
    catalog: CatalogWrites | None,
    deadline: float,
    daemon: subprocess.Popen,
    daemon_log: Path,
    log: Callable[[str], None],
) -> dict[str, Any] | None:
    """Until every drop has a successful run and nothing is queued or running; on the way, one
    run's process is killed inside a warehouse write (see `kill_inside_a_write`)."""
    import dagster as dg

    killed: dict[str, Any] | None = None
    tried: set[str] = set()
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"[{phase.name}] runs not done in time:\n{tail(daemon_log)}")
        if daemon.poll() is not None:
            raise RuntimeError(f"[{phase.name}] dagster-daemon exited:\n{tail(daemon_log)}")
        records = instance.get_run_records(filters=dg.RunsFilter(job_name=JOB))
        succeeded = {
            r.dagster_run.tags.get("dagster/partition")
            for r in records
            if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        }
        busy = [r for r in records if r.dagster_run.status.value in IN_PROGRESS]
        if succeeded >= set(layout) and not busy:
            return killed if (killed or not kill) else {"killed": False}
        if kill and killed is None:
            for record in records:
                run = record.dagster_run
                if run.status.value != "STARTED" or run.parent_run_id or run.run_id in tried:
                    continue
                pid = run_pid(instance, run.run_id)
                if pid is None:
                    continue
                tried.add(run.run_id)
                killed = kill_inside_a_write(phase, instance, run, pid, catalog, log)
                break
        time.sleep(0.25)


def kill_inside_a_write(
    phase: Phase,
    instance: Any,
    run: Any,
    pid: int,
    catalog: CatalogWrites | None,
    log: Callable[[str], None],
    nth: int = 2,
) -> dict[str, Any] | None:
    """Watch the run's process from outside until it enters its `nth` warehouse write (the
    earlier ones committed: the kill lands mid-run), then SIGKILL it there. None if it ended
    first. A write is: file backend, the process holds the warehouse's exclusive write lock
    (/proc/locks); lake, its catalog connection has a transaction open that has written."""
    database = Path(phase.target)
    if catalog is not None:
        how = "its catalog connection had a write transaction open (a lake commit in flight)"
    else:
        how = "it held the warehouse's exclusive write lock (inside a write transaction)"
    seen, was_inside = 0, False
    while Path(f"/proc/{pid}").exists():
        inside = catalog.of(pid) if catalog is not None else holds_file_write_lock(pid, database)
        if inside and not was_inside:
            seen += 1
        if inside and seen >= nth:
            os.kill(pid, signal.SIGKILL)
            steps = steps_started(instance, run.run_id)
            step = steps[-1] if steps else "?"
            log(f"[{phase.name}] SIGKILL run {run.run_id[:8]} (pid {pid}) in {step}: {how}")
            return {
                "killed": True,
                "run_id": run.run_id,
                "drop": run.tags.get("dagster/partition"),
                "pid": pid,
                "step": step,
                "write": seen,
                "moment": how,
            }
        was_inside = inside
        time.sleep(0.001)
    return None


def run_table(instance: Any) -> list[dict[str, Any]]:
    import dagster as dg

    rows = []
    for record in instance.get_run_records(filters=dg.RunsFilter(job_name=JOB), ascending=True):
        run = record.dagster_run
        wait, per_step = waits_of(instance, run.run_id)
        rows.append(
            {
                "run_id": run.run_id,
                "drop": run.tags.get("dagster/partition"),
                "status": run.status.value,
                "retry_of": run.parent_run_id,
                "start": record.start_time,
                "end": record.end_time,
                "seconds": round(record.end_time - record.start_time, 1)
                if record.start_time and record.end_time
                else None,
                "warehouse_wait_s": wait,
                "wait_by_step": per_step,
            }
        )
    return rows


def max_overlap(runs: list[dict[str, Any]]) -> int:
    events = []
    for run in runs:
        if run["start"] and run["end"]:
            events += [(run["start"], 1), (run["end"], -1)]
    current = best = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        current += delta
        best = max(best, current)
    return best


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- the serial reference -----------------------------------------------------------------------


def run_serial(
    work: Path, layout: dict[str, list[str]], source: Path, fleet: Fleet, log: Callable
) -> Path:
    """The same drops one after the other into a fresh DuckDB file, in this process."""
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.settings import Settings

    database = work / "serial" / "warehouse.duckdb"
    drop_root = work / "serial" / "drops"
    drop_root.mkdir(parents=True)
    env = pipeline_env(str(database), None, drop_root, fleet)
    with environment(env), dg.instance_for_test() as instance:
        settings = Settings.from_env()
        job = build_definitions(settings).resolve_job_def(JOB)
        for name in layout:
            shutil.copytree(source / name, drop_root / name)
            instance.add_dynamic_partitions("image_drops", [name])
            started = time.monotonic()
            result = job.execute_in_process(
                partition_key=name,
                instance=instance,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            if not result.success:
                raise RuntimeError(f"serial run of {name} failed")
            log(f"[serial] {name} in {time.monotonic() - started:.1f}s")
    return database


# --- main ---------------------------------------------------------------------------------------


def build_standins() -> None:
    """The stand-in CLIP checkpoint, built once before runs load it at once."""
    from core.clip.standin import standin_checkpoint
    from resources.model_cache import default_model_cache

    standin_checkpoint(Path(default_model_cache()), seed=0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="lake,file", help="lake, file or both, in order")
    parser.add_argument("--drops", type=int, default=4)
    parser.add_argument("--images", type=int, default=60, help="images per drop")
    parser.add_argument("--service-time", type=float, default=0.05, help="s per VLM request")
    parser.add_argument("--no-kill", action="store_true", help="skip the SIGKILL of one run")
    parser.add_argument("--timeout", type=float, default=900.0, help="s per phase")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--reader", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reader:
        target, data_path, stop, out = json.loads(args.reader)
        reader_loop(target, data_path, Path(stop), Path(out))
        return {}
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not set(targets) <= {"lake", "file"} or not targets:
        parser.error("--targets: lake, file or both")
    if args.drops < 2:
        parser.error("--drops: at least 2 (one image is shared by two drops)")

    def log(line: str) -> None:
        print(line, flush=True)

    work = args.keep or Path(tempfile.mkdtemp(prefix="multirun-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root: it must reach its folder
    source = work / "source"
    layout = make_drops(source, args.drops, args.images)
    build_standins()
    pg: Postgres | None = None
    fleet: Fleet | None = None
    results: dict[str, Any] = {
        "drops": args.drops,
        "images_per_drop": args.images,
        "image_files": sum(len(v) for v in layout.values()),
        "distinct_images": sum(len(v) for v in layout.values()) - 1,
        "vlm_servers": 2,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "phases": {},
    }
    started = time.monotonic()
    try:
        if "lake" in targets or postgres_instance_possible():
            pg = start_postgres(work)
        fleet = start_fleet(work, 2, args.service_time)
        log(
            (
                f"PostgreSQL on 127.0.0.1:{pg.port}; "
                if pg
                else "no PostgreSQL: instance on SQLite; "
            )
            + f"2 SGLang doubles behind sglang-router {fleet.url}"
        )
        snapshots = {}
        for name in targets:
            if name == "lake":
                target, data_path = pg.lake_target()
            else:
                target, data_path = str(work / name / "warehouse.duckdb"), None
            phase = Phase(name, target, data_path, work / name)
            phase.work.mkdir(parents=True, exist_ok=True)
            results["phases"][name], snapshots[name] = run_concurrent(
                phase,
                layout,
                source,
                fleet,
                pg,
                kill=not args.no_kill,
                timeout_s=args.timeout,
                log=log,
            )
        serial = run_serial(work, layout, source, fleet, log)
        reference = snapshot(open_target(str(serial), None))
        results["serial_invariants"] = order_invariants(reference)
        for name, snap in snapshots.items():
            phase_result = results["phases"][name]
            phase_result["comparison"] = compare(reference, snap)
            phase_result["invariants"] = order_invariants(snap)
            phase_result["images"] = len(snap["images"]["rows"])
    finally:
        if fleet is not None:
            fleet.stop()
        if pg is not None:
            pg.cluster.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    print_table(table_rows(results))
    write_json(results, args.out)
    return results


def table_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("drops x images (one shared)", f"{results['drops']} x {results['images_per_drop']}"),
        ("distinct images", str(results["distinct_images"])),
    ]
    for name, phase in results["phases"].items():
        runs = phase["runs"]
        reader = phase.get("reader") or {}
        waits = [r["warehouse_wait_s"] for r in runs if r["warehouse_wait_s"] is not None]
        comparison = phase.get("comparison", {})
        rows += [
            (f"{name}: runs (retries)", f"{len(runs)} ({sum(1 for r in runs if r['retry_of'])})"),
            (
                f"{name}: at most at once",
                f"{phase['max_running_at_once']} of {phase['max_concurrent_runs']}",
            ),
            (f"{name}: seconds", str(phase.get("seconds"))),
            (
                f"{name}: warehouse wait s per run",
                ", ".join(f"{w:.2f}" for w in waits) or "not logged",
            ),
            (
                f"{name}: reader answers / errors",
                f"{reader.get('answers')} / {len(reader.get('errors', []))}",
            ),
            (f"{name}: counts shrank", str(len(reader.get("shrinks", [])))),
            (
                f"{name}: rows compared with serial",
                f"{comparison.get('rows_compared')} in {comparison.get('tables')} tables, "
                f"{len(comparison.get('differences', {}))} differ",
            ),
            (f"{name}: SIGKILL of one run in", (phase.get("kill") or {}).get("step", "no kill")),
        ]
    rows.append(("total seconds", str(results["seconds"])))
    return rows


if __name__ == "__main__":
    main()
