"""The warehouse: one interface, two backends, chosen by the target string.

`Warehouse(target)` (or `open_warehouse(target, data_path=...)`) returns a `FileWarehouse` for a
path: one embedded DuckDB file that processes share through the lock in
`core.warehouse.locking` with short connections. For `ducklake:postgres:<conninfo>` it returns a
`LakeWarehouse` (core/warehouse/lake.py): DuckLake with its catalog in PostgreSQL and its data as
Parquet files under a data path, where readers hold connections as long as they like and writers
on many processes or hosts commit snapshots. Both offer the same methods: `transaction()` and
`write()` to write, `reader()`, `query()` and `rows()` to read, `ensure_schema()`, `columns()`
and `stamp()`.

On the file, a process outside the pipeline that keeps the file open (a notebook's
`duckdb.connect(path)`, the DuckDB CLI, even read-only) blocks every run: after `lock_timeout_s`
the run fails with `WarehouseHeld`, one line naming that process. Query the file with the
short-lived `make sql` / `Warehouse.query`, or use the lake.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl

from core.warehouse import locking
from core.warehouse.holder import describe_holder
from core.warehouse.locking import LockTimeout
from core.warehouse.schema import migrate
from core.warehouse.stamp import file_stamp
from core.warehouse.waits import add_wait

__all__ = [
    "LAKE_PREFIX",
    "CommitConflict",
    "FileWarehouse",
    "LockTimeout",
    "Warehouse",
    "WarehouseHeld",
    "WarehouseNotFound",
    "open_warehouse",
]

T = TypeVar("T")
LAKE_PREFIX = "ducklake:"

# DuckDB's Python client shares one database instance between the connections of a process
# and registers its Python scans (`python_arrow_scan`) on that instance as it opens it: a thread
# that connects while another is opening or closing the instance can find them missing
# ("Table Function with name python_arrow_scan does not exist"). Opening and closing are
# serialised here; queries still run in parallel.
_OPEN_CLOSE = threading.Lock()


def _close(conn: duckdb.DuckDBPyConnection) -> None:
    with _OPEN_CLOSE:
        conn.close()


class WarehouseNotFound(FileNotFoundError):
    """A reader asked for a warehouse that no pipeline run has created yet."""


class WarehouseHeld(LockTimeout):
    """A process outside the pipeline kept the DuckDB file open for longer than a run waits."""


class CommitConflict(RuntimeError):
    """A lake commit conflicted with another writer's, replays included; nothing was written."""


def _is_lock_conflict(error: duckdb.Error) -> bool:
    """DuckDB's own words for a file another process holds ("Could not set lock on file ...:
    Conflicting lock is held in ..."); a path that merely contains "lock" is not one."""
    text = str(error)
    return "Conflicting lock" in text or "Could not set lock" in text


def is_lake_target(target: object) -> bool:
    return isinstance(target, str) and target.startswith(LAKE_PREFIX)


class Warehouse:
    """The warehouse interface. `Warehouse(target, ...)` builds the backend the target names:
    a path gives a `FileWarehouse`, `ducklake:postgres:<conninfo>` a `LakeWarehouse`."""

    lock_timeout_s: float

    def __new__(cls, *args: Any, **kwargs: Any) -> Warehouse:
        if cls is Warehouse:
            target = args[0] if args else kwargs.get("path", kwargs.get("target"))
            if is_lake_target(target):
                from core.warehouse.lake import LakeWarehouse

                cls = LakeWarehouse
            else:
                cls = FileWarehouse
        return super().__new__(cls)

    # --- what each backend provides ---------------------------------------------------------------

    def transaction(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        """One write transaction: everything inside commits together or not at all."""
        raise NotImplementedError

    def reader(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A connection for a few queries that all see one committed state."""
        raise NotImplementedError

    def ensure_schema(self) -> None:
        """Create or upgrade the tables (the migrations in core/warehouse/schema.py)."""
        raise NotImplementedError

    def exists(self) -> bool:
        """Whether the warehouse has been created (readers of a missing one get nothing)."""
        raise NotImplementedError

    def stamp(self) -> list | None:
        """A value that changes whenever a write commits, or None when unsure: caches (the
        search index) compare it to know that nothing was written since they were built."""
        raise NotImplementedError

    @property
    def local_dir(self) -> Path:
        """A local folder for files derived from the warehouse (search index, reports)."""
        raise NotImplementedError

    @property
    def key(self) -> str:
        """Identity for per-process caches; holds no secret."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what this process holds open for the warehouse (the lake's attached
        instance); the next use opens it again. The file holds nothing between uses."""

    # --- shared behaviour -------------------------------------------------------------------------

    def write(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run `work(conn)` in one write transaction and return its result. On the lake a commit
        conflict replays `work` on a fresh snapshot (so `work` must only touch `conn`)."""
        with self.transaction() as conn:
            return work(conn)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        """Run one parameterized read query and return the result as a polars DataFrame."""
        with self.reader() as conn:
            return conn.sql(sql, params=params).pl()

    def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple]:
        """Like `query`, returning plain tuples."""
        with self.reader() as conn:
            return conn.execute(sql, params).fetchall()

    def columns(self, table: str) -> list[tuple[str, str]]:
        """(name, DuckDB type) of each column of `table`, in order."""
        return [
            (str(name), str(data_type))
            for name, data_type in self.rows(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = ? AND table_catalog = current_database()"
                " ORDER BY ordinal_position",
                [table],
            )
        ]


# Files this process has migrated, by path: a write then checks one count of the tiny
# schema_migrations table instead of the whole schema, and migrates only when it differs (a
# file replaced at the same path, another process's newer code).
_MIGRATED: dict[str, int] = {}


class FileWarehouse(Warehouse):
    """One DuckDB file. Cheap to construct; opens nothing until a read or write asks for it."""

    def __init__(self, path: str | Path, *, lock_timeout_s: float = 120.0, **_: Any) -> None:
        self.path = Path(path).expanduser().absolute()
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"Warehouse({str(self.path)!r})"

    @property
    def target(self) -> str:
        """What IMAGE_PIPELINE_WAREHOUSE holds for this warehouse."""
        return str(self.path)

    data_path: str | None = None  # the lake's; a file has none

    @property
    def local_dir(self) -> Path:
        return self.path.parent

    @property
    def key(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    def stamp(self) -> list | None:
        return file_stamp(self.path)

    def _open(self, *, read_only: bool, deadline: float) -> duckdb.DuckDBPyConnection:
        """Open a connection, retrying with jittered backoff while a foreign process holds the
        file; past the deadline, fail with one line naming that process."""
        delay = 0.01
        started = time.monotonic()
        try:
            while True:
                try:
                    with _OPEN_CLOSE:
                        return duckdb.connect(str(self.path), read_only=read_only)
                except duckdb.IOException as error:
                    if not _is_lock_conflict(error):
                        raise
                    if time.monotonic() >= deadline:
                        raise WarehouseHeld(
                            f"warehouse {self.path} is held open by {describe_holder(str(error))}"
                            f" for over {self.lock_timeout_s:.0f} s: close that program (query"
                            " with `make sql`, or use the lake backend, to read while runs write)"
                        ) from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
        finally:
            if delay > 0.01:
                add_wait(time.monotonic() - started)

    def _migrate_once(self, conn: duckdb.DuckDBPyConnection) -> None:
        known = _MIGRATED.get(str(self.path))
        if known is not None:
            try:
                row = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
            except duckdb.CatalogException:
                row = None
            if row is not None and row[0] == known:
                return
        _MIGRATED[str(self.path)] = len(migrate(conn))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction: everything inside commits together or not at all."""
        deadline = time.monotonic() + self.lock_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locking.hold(self.path, exclusive=True, timeout_s=self.lock_timeout_s):
            conn = self._open(read_only=False, deadline=deadline)
            try:
                self._migrate_once(conn)
                conn.execute("BEGIN TRANSACTION")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                _close(conn)

    @contextlib.contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection for a few queries; writers wait until it closes."""
        if not self.path.exists():
            raise WarehouseNotFound(
                f"no warehouse at {self.path}: run `make demo` or materialize `images` first"
            )
        deadline = time.monotonic() + self.lock_timeout_s
        with locking.hold(self.path, exclusive=False, timeout_s=self.lock_timeout_s):
            conn = self._open(read_only=True, deadline=deadline)
            try:
                yield conn
            finally:
                _close(conn)

    def ensure_schema(self) -> None:
        """Create or upgrade the tables; the first write of a process also does this."""
        with self.transaction():
            pass


def open_warehouse(
    target: str | Path,
    *,
    data_path: str | None = None,
    lock_timeout_s: float = 120.0,
) -> Warehouse:
    """The warehouse `target` names: a DuckDB file path, or `ducklake:postgres:<conninfo>`
    (no password: libpq reads PGPASSWORD / PGPASSFILE / a service file) with `data_path`."""
    if is_lake_target(target):
        from core.warehouse.lake import LakeWarehouse

        return LakeWarehouse(str(target), data_path=data_path, lock_timeout_s=lock_timeout_s)
    return FileWarehouse(target, lock_timeout_s=lock_timeout_s)


def process_id() -> int:
    """The current PID (a seam for tests and the lake's per-process instance)."""
    return os.getpid()
