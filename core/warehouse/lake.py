"""DuckLake on PostgreSQL: the warehouse many processes and hosts share.

Target `ducklake:postgres:<libpq conninfo>` (no password in it: libpq reads PGPASSWORD, PGPASSFILE
or a service file from the environment) plus a data path, the folder (or object-store URL, which
DuckLake calls DATA_PATH) where the Parquet files live. Each process opens one in-memory DuckDB
with the catalog attached, loading the `ducklake` and `postgres_scanner` extensions from their
PyPI wheels (`duckdb-extension-ducklake`, `duckdb-extension-postgres-scanner`, same version as
duckdb); nothing is downloaded. Every transaction and reader is a cursor of that instance.

Readers never block writers: a reader sees one committed snapshot for as long as it is open.
Writers commit snapshots; DuckLake itself retries a commit that lost the race for the next
snapshot id when the changes do not conflict. A logical conflict (two transactions deleting from
the same data, a table created twice) aborts the commit whole; `write()` replays its work a
bounded number of times with backoff, then raises `CommitConflict` naming the conflict.

Problems at start (missing wheel, unreachable server, wrong credentials, no lake and no data path
to create one, a lake written by newer code) raise `LakeUnavailable` before anything is written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from core.warehouse.connection import LAKE_PREFIX, CommitConflict, Warehouse
from core.warehouse.holder import redact
from core.warehouse.schema import LAKE_BASELINE, MIGRATIONS, lake_baseline
from core.warehouse.waits import add_wait

T = TypeVar("T")
CATALOG = "lake"  # the alias the lake is attached under; `make sql` uses the same
SUPPORTED = ("postgres:",)
# DuckLake's in-commit retries (see the module docstring); the settings belong to a connection.
DUCKLAKE_RETRIES = {"ducklake_max_retry_count": 20, "ducklake_retry_wait_ms": 50}
DEFAULT_MAX_ATTEMPTS = 30  # and never past lock_timeout_s: see write()


class LakeUnavailable(RuntimeError):
    """The lake cannot be opened here; says why. Nothing was written."""


def _conflict(error: BaseException) -> bool:
    text = str(error)
    return "Transaction conflict" in text or "Failed to commit DuckLake transaction" in text


def extension_path(name: str) -> Path:
    """The extension binary inside its PyPI wheel (`duckdb-extension-<name>`), for this duckdb."""
    package = f"duckdb_extension_{name}"
    spec = importlib.util.find_spec(package)
    wheel = f"duckdb-extension-{name.replace('_', '-')}=={duckdb.__version__}"
    if spec is None or not spec.submodule_search_locations:
        raise LakeUnavailable(f"the {name} DuckDB extension is not installed: pip install {wheel}")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        raise LakeUnavailable(
            f"no {name} extension for duckdb {duckdb.__version__} in {root}: pip install {wheel}"
        )
    return path


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def parse_target(target: str) -> str:
    """`ducklake:postgres:<conninfo>` -> `postgres:<conninfo>`; refuses a password in it."""
    if not target.startswith(LAKE_PREFIX):
        raise ValueError(f"a lake target starts with {LAKE_PREFIX!r}")
    metadata = target[len(LAKE_PREFIX) :]
    if not metadata.startswith(SUPPORTED):
        raise ValueError(
            "the lake's catalog must be PostgreSQL: ducklake:postgres:<conninfo>"
            " (a SQLite or DuckDB catalog cannot take several writers)"
        )
    if "password" in metadata.lower():
        raise ValueError(
            "no password in IMAGE_PIPELINE_WAREHOUSE: set PGPASSWORD or PGPASSFILE (or a libpq"
            " service file) in the environment instead"
        )
    return metadata


class _Instance:
    """One process's DuckDB with the lake attached; cursors of it are the connections."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, pid: int) -> None:
        self.conn = conn
        self.pid = pid


_INSTANCES: dict[tuple[str, str | None, bool], _Instance] = {}
_INSTANCES_LOCK = threading.Lock()


class LakeWarehouse(Warehouse):
    """DuckLake with a PostgreSQL catalog. Cheap to construct; attaches on first use."""

    def __init__(
        self,
        target: str,
        *,
        data_path: str | Path | None = None,
        lock_timeout_s: float = 120.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        local_dir: str | Path | None = None,
        read_only: bool = False,
        **_: Any,
    ) -> None:
        self.target = target
        self.metadata = parse_target(target)
        self.data_path = str(data_path) if data_path else None
        self.lock_timeout_s = lock_timeout_s
        self.max_attempts = max(1, max_attempts)
        self.read_only = read_only  # attach READ_ONLY: no writes, no schema changes (`make sql`)
        if local_dir is not None:
            self._local_dir = Path(local_dir).expanduser().absolute()
        elif self.data_path and "://" not in self.data_path:
            self._local_dir = Path(self.data_path).expanduser().absolute().parent
        else:
            self._local_dir = Path.cwd() / "data"

    def __repr__(self) -> str:
        return f"LakeWarehouse({redact(self.target)!r}, data_path={self.data_path!r})"

    @property
    def local_dir(self) -> Path:
        return self._local_dir

    @property
    def key(self) -> str:
        return f"{redact(self.target)}|{self.data_path}"

    # --- attaching --------------------------------------------------------------------------------

    def _attach(self) -> duckdb.DuckDBPyConnection:
        paths = [extension_path("ducklake"), extension_path("postgres_scanner")]
        conn = duckdb.connect(
            ":memory:",
            config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
        )
        try:
            for path in paths:
                conn.execute(f"LOAD {_quote(str(path))}")
            for name, value in DUCKLAKE_RETRIES.items():
                conn.execute(f"SET {name} = {int(value)}")
            options = ["READ_ONLY"] if self.read_only else []
            if self.data_path and not self.read_only:
                options.append(f"DATA_PATH {_quote(self.data_path)}")
            else:
                options.append("CREATE_IF_NOT_EXISTS false")
            try:
                conn.execute(
                    f"ATTACH {_quote('ducklake:' + self.metadata)} AS {CATALOG}"
                    f" ({', '.join(options)})"
                )
            except duckdb.Error as error:
                raise LakeUnavailable(self._explain(error)) from None
            conn.execute(f"USE {CATALOG}")
            if not self.read_only:
                self._ensure(conn)
            return conn
        except BaseException:
            conn.close()
            raise

    def _explain(self, error: duckdb.Error) -> str:
        text = " ".join(str(error).split())
        if "does not exist - and creating a new DuckLake is explicitly disabled" in text:
            return (
                f"no lake at {redact(self.metadata)}: set IMAGE_PIPELINE_LAKE_DATA_PATH to"
                " create one"
            )
        return f"cannot open the lake {redact(self.metadata)}: {redact(text)}"

    def _instance(self) -> duckdb.DuckDBPyConnection:
        key = (self.metadata, self.data_path, self.read_only)
        pid = os.getpid()
        with _INSTANCES_LOCK:
            instance = _INSTANCES.get(key)
            if instance is None or instance.pid != pid:  # a forked child attaches its own
                instance = _Instance(self._attach(), pid)
                _INSTANCES[key] = instance
            return instance.conn

    def close(self) -> None:
        with _INSTANCES_LOCK:
            instance = _INSTANCES.pop((self.metadata, self.data_path, self.read_only), None)
        if instance is not None and instance.pid == os.getpid():
            instance.conn.close()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        return _use(self._instance().cursor())

    # --- schema -----------------------------------------------------------------------------------

    def _ensure(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Create the lake's tables in one snapshot, or apply migrations newer than it has;
        refuse a lake that records migrations this code does not know."""
        for attempt in range(self.max_attempts):
            cursor = _use(conn.cursor())
            try:
                cursor.execute("BEGIN TRANSACTION")
                applied = self._applied(cursor)
                if applied is None:
                    for statement in lake_baseline():
                        cursor.execute(statement)
                    now = datetime.now(UTC)
                    cursor.executemany(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                        [(n, name, now) for n, name, _ in MIGRATIONS if n in LAKE_BASELINE],
                    )
                    cursor.execute("COMMIT")
                    applied = {n for n, _, _ in MIGRATIONS if n in LAKE_BASELINE}
                    cursor.execute("BEGIN TRANSACTION")
                unknown = applied - {n for n, _, _ in MIGRATIONS}
                if unknown:
                    raise LakeUnavailable(
                        f"the lake {redact(self.metadata)} has schema migrations {sorted(unknown)}"
                        " this code does not know: upgrade the pipeline before writing to it"
                    )
                cursor.execute("ROLLBACK")
                for number, name, ddl in sorted(MIGRATIONS):
                    if number in applied:
                        continue
                    cursor.execute("BEGIN TRANSACTION")
                    if number not in (self._applied(cursor) or set()):
                        cursor.execute(ddl)
                        cursor.execute(
                            "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                            [number, name, datetime.now(UTC)],
                        )
                    cursor.execute("COMMIT")
                return
            except duckdb.Error as error:
                with contextlib.suppress(duckdb.Error):
                    cursor.execute("ROLLBACK")
                if not _conflict(error) or attempt + 1 == self.max_attempts:
                    raise
                time.sleep(0.05 * (2**attempt) * (0.5 + random.random()))
            finally:
                cursor.close()

    @staticmethod
    def _applied(cursor: duckdb.DuckDBPyConnection) -> set[int] | None:
        exists = cursor.execute(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_name = 'schema_migrations' AND table_catalog = current_database()"
        ).fetchone()
        if not exists or not exists[0]:
            return None
        return {
            int(v) for (v,) in cursor.execute("SELECT version FROM schema_migrations").fetchall()
        }

    def ensure_schema(self) -> None:
        """Attach (creating or upgrading the lake's tables); fails fast when it cannot."""
        self._instance()

    def exists(self) -> bool:
        """A lake that can be attached exists: attaching creates its tables."""
        self._instance()
        return True

    def stamp(self) -> list | None:
        """['lake', current snapshot id]: every commit makes a new snapshot."""
        with self.reader() as conn:
            row = conn.execute(f"SELECT id FROM ducklake_current_snapshot('{CATALOG}')").fetchone()
        return ["lake", int(row[0])] if row else None

    # --- reading and writing ----------------------------------------------------------------------

    @contextlib.contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside one read transaction: all its queries see one snapshot. It never
        blocks a writer, however long it stays open."""
        conn = self._cursor()
        try:
            conn.execute("BEGIN TRANSACTION")
            try:
                yield conn
            finally:
                with contextlib.suppress(duckdb.Error):
                    conn.execute("ROLLBACK")
        finally:
            conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction, committed as one snapshot or not at all. A commit conflict
        raises `CommitConflict` (use `write()` to replay the work instead)."""
        conn = self._cursor()
        try:
            conn.execute("BEGIN TRANSACTION")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except duckdb.Error as error:
                with contextlib.suppress(duckdb.Error):
                    conn.execute("ROLLBACK")
                if _conflict(error):
                    raise CommitConflict(_conflict_line(error)) from None
                raise
        finally:
            conn.close()

    def write(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run `work(conn)` in one transaction; replay it on a commit conflict with jittered
        exponential backoff, at most `max_attempts` times and not after `lock_timeout_s`, then
        raise `CommitConflict` naming the conflict."""
        delay = 0.05
        last = ""
        deadline = time.monotonic() + self.lock_timeout_s
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                with self.transaction() as conn:
                    return work(conn)
            except CommitConflict as conflict:
                last = str(conflict)
                if attempt >= self.max_attempts or time.monotonic() >= deadline:
                    break
                time.sleep(random.uniform(0.2, 1.0) * delay)
                delay = min(delay * 2, 1.0)
                add_wait(time.monotonic() - started)
        raise CommitConflict(
            f"gave up after {attempt} attempts, each conflicting with another"
            f" writer's commit ({last}); nothing of this transaction was written"
        )


def _use(cursor: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor starts in the instance's in-memory catalog: point it at the lake."""
    cursor.execute(f"USE {CATALOG}")
    return cursor


def _conflict_line(error: BaseException) -> str:
    """DuckLake's sentence naming the conflict ("Transaction conflict - ...")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Transaction conflict" in line:
            return line
    return lines[-1] if lines else "commit conflict"
